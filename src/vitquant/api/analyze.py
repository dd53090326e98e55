"""``vq.analyze`` (activation outliers, weight statistics) and ``vq.sensitivity`` (per layer).

Both call the library's analysis as ``vitquant analyze`` / ``vitquant sensitivity`` do, on the
calibration images (analyze) and the val images (sensitivity), and return the computed objects
with ``to_dict()`` giving the command's JSON. Nothing is drawn: the figures are the
``vitquant.plots.analysis`` functions' job, on these numbers.
"""

from __future__ import annotations

import time

from vitquant.api.results import Analysis, Sensitivity
from vitquant.api.setup import setup
from vitquant.errors import VitquantError


def analyze(
    model,
    *,
    data=None,
    calibration=None,
    limit: int | None = None,
    threshold: float = 5.0,
    batch_size: int = 64,
    sample_size: int = 2000,
    seed: int = 0,
    family: str | None = None,
) -> Analysis:
    """Activation statistics of every observed point, and weight statistics.

    Points: every Linear/Conv output, and for ViTs (``family="vit"``, guessed from LayerNorm or
    attention modules) every LayerNorm and GELU output and timm attention's softmax. Exact
    streaming statistics over the calibration images (two passes): min, max, mean, std,
    quartiles, the IQR fences and the share of values outside them (``outlier_pct``).

    Args:
        model: any ``nn.Module`` (or a registry name / ``load_model`` module).
        data: a named data set (its calibration role) or ``vq.load_data(...)``.
        calibration: your own ``(images, labels)`` batches (labels may be omitted), fed as
            they are.
        limit: only the first ``limit`` calibration images.
        threshold: a point is ``significant`` above this outlier percentage.
        batch_size: images per forward pass.
        sample_size: values (and outliers) kept per point for box plots.
        seed: seed of those samples.
        family: ``vit`` or ``cnn`` (None: guessed).

    Returns:
        An ``Analysis``: ``points`` (``PointStats``), ``weights`` (``WeightStats``),
        ``top(k)``, ``significant_modules``; ``to_dict()`` as ``analyze.json``.
    """
    from vitquant.analysis.stats import collect_activation_stats
    from vitquant.analysis.summary import analysis_document
    from vitquant.analysis.weights import weight_stats

    if not 0 <= threshold <= 100:
        raise VitquantError(f"threshold is a percentage in [0, 100] (got {threshold}).")
    if batch_size <= 0 or sample_size < 0:
        raise VitquantError("batch_size must be > 0 and sample_size >= 0.")
    s = setup(model, data=data, calibration=calibration, family=family)
    s.require("calib", why="the activation analysis")
    start = time.perf_counter()
    stats = collect_activation_stats(
        s.model,
        s.data,
        s.spec,
        limit=limit,
        threshold=threshold,
        batch_size=batch_size,
        sample_size=sample_size,
        seed=seed,
        progress=False,
    )
    weights = weight_stats(s.model, threshold=threshold)
    n_images = len(s.data.calib_idx) if limit is None else min(limit, len(s.data.calib_idx))
    payload = {
        **s.describe(),
        "family": s.spec.family,
        "role": "calib",
        "n_images": n_images,
        "threshold_pct": threshold,
        "seconds": time.perf_counter() - start,
        **analysis_document(stats, weights),
        "figures": {},
    }
    return Analysis(payload=payload, points=stats, weights=weights)


def sensitivity(
    model,
    *,
    data=None,
    calibration=None,
    val=None,
    layers: list[str] | None = None,
    limit: int | None = None,
    calib_limit: int | None = None,
    batch_size: int = 128,
    family: str | None = None,
) -> Sensitivity:
    """Per-layer W8A8 sensitivity on val: each layer int8 alone, and every layer but it.

    Activation ranges come from the calibration images; accuracies, KL divergence from the
    float predictions and top-1 agreement are measured on val (never test). About
    ``2 * layers + 2`` evaluations of val.

    Args:
        model: any ``nn.Module`` (or a registry name / ``load_model`` module).
        data: a named data set or ``vq.load_data(...)``.
        calibration, val: your own ``(images, labels)`` batches, fed as they are.
        layers: the layers to rank (default: every Linear/Conv).
        limit: only the first ``limit`` val images.
        calib_limit: only the first ``calib_limit`` calibration images.
        batch_size: evaluation batch size.
        family: ``vit`` or ``cnn`` (None: guessed).

    Returns:
        A ``Sensitivity``: ``layers`` (``LayerSensitivity``, most sensitive first),
        ``ranking``; ``to_dict()`` as ``sensitivity.json``.
    """
    from vitquant.analysis.sensitivity import __doc__ as method
    from vitquant.analysis.sensitivity import per_layer_sensitivity
    from vitquant.analysis.summary import sensitivity_summary

    s = setup(model, data=data, calibration=calibration, val=val, family=family)
    s.require("calib", "val", why="the sensitivity analysis")
    start = time.perf_counter()
    rows = per_layer_sensitivity(
        s.model,
        s.data,
        s.spec,
        role="val",
        limit=limit,
        layers=layers,
        calib_limit=calib_limit,
        batch_size=batch_size,
        progress=False,
    )
    payload = {
        **s.describe(),
        "role": "val",
        "method": " ".join((method or "").split()),
        "ranked_by": "only_kl (descending)",
        "float_acc": rows[0].float_acc if rows else None,
        "all_acc": rows[0].all_acc if rows else None,
        "all_kl": rows[0].all_kl if rows else None,
        "seconds": time.perf_counter() - start,
        "layers": [r.to_dict() for r in rows],
        "summary": sensitivity_summary(rows),
        "figures": {},
    }
    return Sensitivity(payload=payload, layers=rows)
