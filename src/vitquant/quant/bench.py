"""Re-measure saved variants: load each artifact of a ``quantize.json`` and measure it again.

``bench_rows(document, bundle, spec, ...)`` loads every row's ``artifact`` (``.pt`` state dicts,
``.pt2`` pt2e programs, ``.onnx`` files, ``.pte`` ExecuTorch programs), and measures accuracy on
``test``, size on disk and latency, so figures can be checked on another machine, thread count
or test subset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.evaluate import example_batch, file_size_mb, predict, set_threads
from vitquant.quant.artifacts import (
    load_dynamic,
    load_pt2e,
    lowered_latency,
    measure_latency,
)
from vitquant.quant.configs import DynamicPTQ
from vitquant.quant.lowered import inductor_lowers
from vitquant.registry import load_state_dict_strict, read_state_dict
from vitquant.results import ResultRow, ScoreWeights, finalize


def load_runner(row: dict, spec, *, threads: int):
    """A callable ``x -> logits`` for a saved variant (``row`` from ``quantize.json``)."""
    path = Path(row.get("artifact") or "")
    if not path.is_file():
        raise VitquantError(f"artifact {path} of {row['variant']}/{row['backend']} is missing.")
    backend, variant = row["backend"], row["variant"]
    if backend == "onnxruntime":
        from vitquant.quant.onnx_backend import OrtModel

        return OrtModel(path, threads=threads)
    if backend.startswith("pt2e"):
        return load_pt2e(path)
    if backend == "executorch-xnnpack":
        from vitquant.quant.executorch_backend import PteModel

        return PteModel(path, threads=threads)
    if backend == "pytorch":
        model = spec.build(spec.num_classes or 1000).eval()
        if variant == "dynamic":
            cfg = dict((row.get("extra") or {}).get("config") or {})
            if "types" in cfg:
                cfg["types"] = tuple(cfg["types"])
            return load_dynamic(model, path, cfg=DynamicPTQ(**cfg), ignore=row.get("ignored", []))
        load_state_dict_strict(model, read_state_dict(path), str(path))
        return model
    raise VitquantError(f"bench cannot load backend {backend!r} ({path}).")


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
        Finalized rows; ``extra.quantize_accuracy`` holds the accuracy ``quantize`` reported.
    """
    n_threads = set_threads(threads)
    examples = {b: example_batch(bundle, spec, b) for b in latency_batches}
    rows = []
    for old in document.get("results", []):
        if not old.get("artifact"):
            continue
        runner = load_runner(old, spec, threads=n_threads)
        logits, labels = predict(runner, bundle, "test", spec)
        acc = (logits.argmax(1) == labels).float().mean().item()
        simulated = False
        extra = {"quantize_accuracy": old["accuracy"], "quantize_n": old.get("n")}
        if isinstance(runner, torch.fx.GraphModule):
            if lower and inductor_lowers(old["backend"]):
                lat, simulated, error, _ = lowered_latency(runner, examples)
                if error:
                    extra["lowering_error"] = error
                torch._dynamo.reset()
            else:
                lat, simulated = measure_latency(runner, examples), True
        else:
            lat = measure_latency(runner, examples)
        extra["latency_ms_per_image_by_batch"] = {str(b): v for b, v in lat.items()}
        row = ResultRow(
            variant=old["variant"],
            backend=old["backend"],
            accuracy=acc,
            n=len(labels),
            int8_layers=old.get("int8_layers", 0),
            float_layers=old.get("float_layers", 0),
            size_mb=file_size_mb(old["artifact"]),
            latency_ms_per_image=lat[latency_batch],
            latency_batch=latency_batch,
            latency_threads=n_threads,
            simulated=simulated,
            ignored=list(old.get("ignored", [])),
            artifact=old["artifact"],
            extra=extra,
        )
        rows.append(row)
        log(
            f"{row.variant:<14} {row.backend:<18} acc {acc:.4f}  size {row.size_mb:.3f} MiB  "
            f"{row.latency_ms_per_image:.3f} ms/img"
        )
    if not rows:
        raise VitquantError("the quantize.json lists no saved artifacts to bench.")
    return finalize(rows, weights)
