"""Summaries of per-point, per-weight and per-layer results by block index and by layer type.

They back statements such as "early blocks are more sensitive" or "qkv/proj dominate": every
group reports its count, mean and max of the chosen metrics and how many members are significant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from vitquant.analysis.hooks import KINDS


def _group(
    rows: Iterable[Any], key: Callable[[Any], Any], metrics: dict[str, Callable[[Any], float]]
) -> dict[Any, dict]:
    groups: dict[Any, list] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    out = {}
    for k, members in groups.items():
        entry: dict = {"count": len(members)}
        for metric, get in metrics.items():
            values = np.array([get(m) for m in members], dtype=np.float64)
            finite = values[np.isfinite(values)]
            entry[f"{metric}_mean"] = float(finite.mean()) if finite.size else None
            entry[f"{metric}_max"] = float(finite.max()) if finite.size else None
        if all(hasattr(m, "significant") for m in members):
            entry["significant"] = int(sum(bool(m.significant) for m in members))
        out[k] = entry
    return out


def _ordered_kinds(groups: dict) -> list[str]:
    return [k for k in KINDS if k in groups] + sorted(k for k in groups if k not in KINDS)


def by_block(rows: Iterable[Any], metrics: dict[str, Callable[[Any], float]]) -> list[dict]:
    """One entry per block index (``None`` = outside blocks, listed last)."""
    groups = _group(rows, lambda r: r.block, metrics)
    keys = sorted(k for k in groups if k is not None) + ([None] if None in groups else [])
    return [{"block": k, **groups[k]} for k in keys]


def by_kind(rows: Iterable[Any], metrics: dict[str, Callable[[Any], float]]) -> list[dict]:
    """One entry per layer type (qkv, proj, fc1, fc2, norm, act, softmax, head, conv, ...)."""
    groups = _group(rows, lambda r: r.kind, metrics)
    return [{"kind": k, **groups[k]} for k in _ordered_kinds(groups)]


ACTIVATION_METRICS: dict[str, Callable[[Any], float]] = {
    "outlier_pct": lambda s: s.outlier_pct,
    "channel_absmax_ratio": lambda s: s.channel_absmax_ratio,
    "absmax": lambda s: max(abs(s.min), abs(s.max)),
}
WEIGHT_METRICS: dict[str, Callable[[Any], float]] = {
    "change_score": lambda w: w.change_score,
    "sqnr_db": lambda w: w.sqnr_db,
    "sqnr_db_per_channel": lambda w: w.sqnr_db_per_channel,
    "outlier_pct": lambda w: w.outlier_pct,
}
SENSITIVITY_METRICS: dict[str, Callable[[Any], float]] = {
    "only_kl": lambda s: s.only_kl,
    "only_drop_pts": lambda s: s.only_drop_pts,
    "all_but_kl": lambda s: s.all_but_kl,
}


def activation_summary(stats: list) -> dict:
    """``{"by_block": [...], "by_kind": [...]}`` of activation outlier percentages."""
    return {
        "by_block": by_block(stats, ACTIVATION_METRICS),
        "by_kind": by_kind(stats, ACTIVATION_METRICS),
    }


def weight_summary(rows: list) -> dict:
    """``{"by_block": [...], "by_kind": [...]}`` of change scores and SQNR."""
    return {"by_block": by_block(rows, WEIGHT_METRICS), "by_kind": by_kind(rows, WEIGHT_METRICS)}


def sensitivity_summary(rows: list) -> dict:
    """``{"by_block": [...], "by_kind": [...]}`` of per-layer sensitivity."""
    return {
        "by_block": by_block(rows, SENSITIVITY_METRICS),
        "by_kind": by_kind(rows, SENSITIVITY_METRICS),
    }


def analysis_document(stats: list, weights: list, *, top: int = 10, top_change: int = 5) -> dict:
    """The figures of an ``analyze.json`` (``analyze``, ``vq.analyze`` and the pipeline's
    analysis step all write them): per-point ``layers``, per-layer ``weights``, the ``summary``
    by block and kind, the ``top`` outlier points, the ``top_change`` weight change scores and
    the modules owning a significant point."""
    from vitquant.analysis.weights import ranked_by_change

    return {
        "layers": [s.to_dict() for s in stats],
        "weights": [w.to_dict() for w in weights],
        "summary": {"activations": activation_summary(stats), "weights": weight_summary(weights)},
        "top_outliers": [s.point for s in sorted(stats, key=lambda s: -s.outlier_pct)[:top]],
        "top_change_scores": [w.name for w in ranked_by_change(weights)[:top_change]],
        "significant_modules": sorted({s.module for s in stats if s.significant}),
    }
