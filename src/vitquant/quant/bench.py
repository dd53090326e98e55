"""Re-measure saved variants: load each artifact of a ``quantize.json`` and measure it again.

``bench_rows(document, bundle, spec, ...)`` reloads every row's ``artifact`` - through its
backend (``vitquant.quant.backends``: ``.pt2`` pt2e programs, ``.pte`` ExecuTorch programs,
``.onnx`` files) or, for ``pytorch`` rows, as a state dict (fp32, eager dynamic int8) - and
measures it with the one ``Measurer`` (accuracy on ``test``, size on disk, latency), so figures
can be checked on another machine, thread count or test subset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.measure import Candidate, Measurer
from vitquant.quant.artifacts import load_dynamic
from vitquant.quant.backends import Lowered, backend_for_label
from vitquant.quant.configs import DynamicPTQ
from vitquant.registry import load_state_dict_strict, read_state_dict
from vitquant.results import ResultRow, ScoreWeights


def load_runner(
    row: dict,
    spec,
    *,
    threads: int | None = None,
    lower: bool = True,
    probe: torch.Tensor | None = None,
) -> Lowered:
    """The runner of a saved variant (``row`` from ``quantize.json``) and how it runs.

    pt2e graph rows are lowered by their backend (``Backend.lower``: x86 compiles with
    inductor unless ``lower`` is False; ``probe`` is the batch it compiles for); deployed rows
    are loaded by their backend (``Backend.load``).
    """
    path = Path(row.get("artifact") or "")
    if not path.is_file():
        raise VitquantError(f"artifact {path} of {row['variant']}/{row['backend']} is missing.")
    label, variant = row["backend"], row["variant"]
    backend = backend_for_label(label)
    if backend is not None and label == backend.graph_label:
        return backend.lower(backend.load_graph(path), enabled=lower, probe=probe)
    if backend is not None:
        return Lowered(backend.load(path, threads=threads), simulated=False)
    if label != "pytorch":
        raise VitquantError(f"bench cannot load backend {label!r} ({path}).")
    model = spec.build(spec.num_classes or 1000).eval()
    if variant == "dynamic":  # PyTorch's eager dynamic int8: rebuilt, then its state loaded
        cfg = dict((row.get("extra") or {}).get("config") or {})
        if "types" in cfg:
            cfg["types"] = tuple(cfg["types"])
        model = load_dynamic(model, path, cfg=DynamicPTQ(**cfg), ignore=row.get("ignored", []))
    else:
        load_state_dict_strict(model, read_state_dict(path), str(path))
    return Lowered(model, simulated=False)


def _runtime(label: str) -> str:
    backend = backend_for_label(label)
    return backend.runtime if backend is not None and label == backend.label else "pytorch"


def bench_rows(
    document: dict,
    bundle: DataBundle,
    spec,
    *,
    threads: int | None = None,
    lower: bool = True,
    latency_batches: tuple[int, ...] = (1, 32),
    latency_batch: int = 1,
    weights: ScoreWeights = ScoreWeights(),
    log: Callable[[str], None] = print,
) -> list[ResultRow]:
    """Measure every saved variant of ``document`` (a ``quantize.json``) again.

    Returns:
        Finalized rows; ``extra.quantize_accuracy`` / ``extra.quantize_n`` hold what
        ``quantize`` reported, and a row made from another (``extra.twin``) is compared with it
        again (``agreement_pt2e``).
    """
    measurer = Measurer(
        bundle,
        spec,
        roles=("test",),
        latency_batches=latency_batches,
        latency_batch=latency_batch,
        threads=threads,
        log=log,
    )
    examples = measurer.examples
    probe = examples[max(examples)] if examples else None
    for old in document.get("results", []):
        if not old.get("artifact"):
            continue
        lowered = load_runner(old, spec, threads=measurer.threads, lower=lower, probe=probe)
        extra = dict(old.get("extra") or {})
        twin = tuple(extra["twin"]) if extra.get("twin") else None
        measurer.measure(
            Candidate(
                old["variant"],
                old["backend"],
                lowered.runner,
                runtime=old.get("runtime") or _runtime(old["backend"]),
                artifact=old["artifact"],
                int8_layers=old.get("int8_layers", 0),
                float_layers=old.get("float_layers", 0),
                ignored=list(old.get("ignored", [])),
                simulated=lowered.simulated,
                twin=twin if twin and measurer.find(*twin) else None,
                extra={
                    "quantize_accuracy": old["accuracy"],
                    "quantize_n": old.get("n"),
                    **lowered.extra,
                },
            )
        )
        torch._dynamo.reset()  # free compiled graphs of a lowered row (cheap otherwise)
    if not measurer.measured:
        raise VitquantError("the quantize.json lists no saved artifacts to bench.")
    return measurer.finalize(weights)
