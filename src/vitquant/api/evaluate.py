"""``vq.evaluate``: accuracy, agreement, size and latency of any model, as results rows.

Rows are built by the library's one row builder, ``vitquant.measure.Measurer``: the model
(and its ``reference``, measured first) run over ``test`` (and ``val``) once each, are timed on
the same example batches, and their rows carry ``agreement_fp32`` (with a float reference) or
``agreement_pt2e`` (an exported artifact against the quantized model it came from).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from vitquant.api.results import Evaluation
from vitquant.api.setup import Setup, roles_present, setup
from vitquant.errors import VitquantError


def artifact_backend(model):
    """The backend whose runtime runs ``model``, a runner ``load_artifact`` returned for one of
    its files (ONNX Runtime, ExecuTorch), known by the file's suffix; else None."""
    from vitquant.quant.backends import BACKENDS

    path = getattr(model, "path", None)
    if path is None or isinstance(model, nn.Module):
        return None
    suffix = Path(path).suffix
    return next(
        (b for b in BACKENDS.values() if b.runtime != "pytorch" and b.suffix == suffix), None
    )


def float_candidate(model, *, variant: str = "fp32"):
    """A float PyTorch module as a ``Candidate`` (size: its saved state_dict)."""
    from vitquant.evaluate import state_dict_size_mb
    from vitquant.layers import quantizable_names
    from vitquant.measure import Candidate

    return Candidate(
        variant=variant,
        backend="pytorch",
        runner=model,
        size_bytes=round(state_dict_size_mb(model) * 2**20),
        float_layers=quantizable_names(model),
    )


def candidate_of(model, *, variant: str | None = None, twin: tuple[str, str] | None = None):
    """Any model the API knows as a ``Candidate``: a ``Quantized``, an ONNX Runtime or ExecuTorch
    runner (``load_artifact``), a graph module or a float ``nn.Module``."""
    from vitquant.measure import Candidate

    if _is_result(model):
        cand = model.candidate()
        cand.variant = variant or cand.variant
        return cand
    target = artifact_backend(model)
    if target is not None:
        return Candidate(
            variant=variant or "model",
            backend=target.label,
            runtime=target.runtime,
            runner=model,
            artifact=Path(model.path),
            twin=twin,
        )
    if _needs_view(model):
        return float_candidate(model, variant=variant or "fp32")
    return Candidate(
        variant=variant or "model", backend="pt2e", runner=model, size_bytes=0, twin=twin
    )


def measure_rows(
    s: Setup,
    candidates: list,
    *,
    latency_batches: Sequence[int] = (1, 32),
    threads: int | None = None,
    roles: Sequence[str] = ("val", "test"),
    keep: dict | None = None,
) -> list:
    """Measure ``candidates`` in order on the setup's val/test roles; the finalized rows.

    Latency is timed on test images only (none without a test role). ``keep`` receives each
    row's predictions by role (``"variant/backend" -> {role: labels}``).
    """
    from vitquant.measure import Measurer

    present = roles_present(s, roles)
    if not present:
        raise VitquantError(
            "measuring needs val or test images: pass test= (or val=) batches or data=."
        )
    lat = tuple(latency_batches) if s.has("test") else ()
    measurer = Measurer(
        s.data,
        s.spec,
        roles=present,
        latency_batches=lat,
        latency_batch=(1 if 1 in lat else lat[0]) if lat else 1,
        threads=threads,
        log=None,
    )
    for cand in candidates:
        measurer.measure(cand)
    if keep is not None:
        for m in measurer.measured:
            keep[f"{m.row.variant}/{m.row.backend}"] = m.preds
    return measurer.finalize()


def evaluate(
    model,
    *,
    reference=None,
    data=None,
    val=None,
    test=None,
    variant: str | None = None,
    latency_batches: Sequence[int] = (1, 32),
    threads: int | None = None,
    family: str | None = None,
) -> Evaluation:
    """Accuracy (test, and val when given), size, latency and agreement of ``model``.

    Args:
        model: a float ``nn.Module`` (or registry name), a ``Quantized`` from ``quantize``, or
            a runner from ``load_artifact`` (``.onnx``, ``.pte``, ``.pt2``).
        reference: a model measured first on the same images: a float module (the row gets
            ``agreement_fp32``, ``drop_pts`` and speedups) or a ``Quantized`` the evaluated
            artifact was exported from (``agreement_pt2e``). Default: a ``Quantized``'s float
            model; none for others.
        data: a named data set or ``vq.load_data(...)``.
        val, test: your own ``(images, labels)`` batches, fed as they are.
        variant: the row's variant label (default: ``fp32`` for a float module, the quantized
            variant, or the reference's variant for an artifact).
        latency_batches: batch sizes timed on test images (empty: no timing).
        threads: intra-op threads (None: all cores).
        family: ``vit``/``cnn`` for a module vitquant did not build (None: guessed).

    Returns:
        An ``Evaluation``: ``rows`` (reference first), ``row``/``accuracy`` of ``model``, and
        ``to_dict()`` as ``eval.json`` (the row's fields at the top level and under
        ``results``).
    """
    if reference is None and _is_result(model):
        reference = model.float_model
    if reference is not None and not (isinstance(reference, nn.Module) or _is_result(reference)):
        raise VitquantError("reference= takes the float nn.Module or a Quantized result.")
    # The spec (and the logits view of a float module) come from the reference when given.
    s = setup(
        model if reference is None else reference, data=data, val=val, test=test, family=family
    )
    cands, twin = [], None
    if reference is None:
        runner = model if _is_result(model) else s.model
    else:
        ref = candidate_of(reference if _is_result(reference) else s.model)
        cands.append(ref)
        twin = (ref.variant, ref.backend) if _is_result(reference) else None
        runner = setup_view(model, s)
    label = variant
    if label is None and not _is_result(model) and reference is not None:
        label = twin[0] if twin else "model"  # an artifact: its source's variant
    cands.append(candidate_of(runner, variant=label, twin=twin))
    preds: dict = {}
    rows = measure_rows(s, cands, latency_batches=latency_batches, threads=threads, keep=preds)
    row = rows[-1]
    payload = {**s.describe(), **row.to_dict(), "results": [r.to_dict() for r in rows]}
    return Evaluation(payload=payload, rows=rows, predictions=preds)


def _is_result(model) -> bool:
    return getattr(model, "is_vitquant_result", False)


def _needs_view(model) -> bool:
    return isinstance(model, nn.Module) and not hasattr(model, "graph")


def setup_view(model, s: Setup):
    """``model`` as ``x -> logits`` (its logits view for a module returning an object)."""
    from vitquant.api.model import probe

    if _is_result(model) or not _needs_view(model) or s.data is None:
        return model
    role = next(r for r in ("test", "val", "calib", "fit") if s.has(r))
    example = next(s.data.batches(role, s.spec, batch_size=2))[0]
    return probe(model, example)[0]
