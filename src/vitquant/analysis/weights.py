"""Weight statistics, the study's change score, and robust int8 error metrics (SQNR, rel. MSE).

The change score is kept exactly as the study computed it, in NumPy on the float32 weights::

    scale = max|w| / 127
    q = clip(round_half_even(w / scale), -127, 127) * scale          # int8 per-tensor symmetric
    C = |mean(q) - mean(w)| / mean(w) + |std(q) - std(w)| / std(w)   # signed denominators

Because ``mean(w)`` is close to zero (and may be negative), ``C`` can be huge or negative; it is
reported and ranked as the study did (highest first), with SQNR and relative MSE beside it as the
robust measures of how much int8 changes a tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from vitquant.analysis.hooks import block_names, head_name, layer_kind
from vitquant.evaluate import QUANTIZABLE

QMAX = 127


def fake_quant_per_tensor_symmetric(w: np.ndarray) -> np.ndarray:
    """int8 per-tensor symmetric fake quantization: ``clamp(round(w / s), -127, 127) * s``.

    ``s = max|w| / 127``; rounding is half-to-even (``np.round``). Computed in ``w``'s dtype.
    """
    w = np.asarray(w)
    scale = np.max(np.abs(w)) / QMAX
    if scale == 0:
        return np.zeros_like(w)
    return np.clip(np.round(w / scale), -QMAX, QMAX) * scale


def fake_quant_per_channel_symmetric(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """int8 per-channel symmetric fake quantization with one scale per slice along ``axis``."""
    w = np.asarray(w)
    other = tuple(d for d in range(w.ndim) if d != axis)
    scale = np.max(np.abs(w), axis=other, keepdims=True) / QMAX
    safe = np.where(scale == 0, 1, scale).astype(w.dtype)
    return np.clip(np.round(w / safe), -QMAX, QMAX) * safe


def change_score_parts(w: np.ndarray) -> tuple[float, float, float]:
    """``(C, mean_change, std_change)`` of the study's change score (see the module docstring)."""
    orig = np.asarray(w)
    q = fake_quant_per_tensor_symmetric(orig)
    mean_change = np.abs(np.mean(q) - np.mean(orig))
    std_change = np.abs(np.std(q) - np.std(orig))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = mean_change / np.mean(orig) + std_change / np.std(orig)
    return float(score), float(mean_change), float(std_change)


def change_score(w: np.ndarray) -> float:
    """The study's change score ``C`` of a weight tensor (may be huge or negative)."""
    return change_score_parts(w)[0]


def sqnr_db(orig: np.ndarray, q: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum(orig^2) / sum((orig - q)^2))`` in dB."""
    o = np.asarray(orig, dtype=np.float64)
    noise = np.sum((o - np.asarray(q, dtype=np.float64)) ** 2)
    signal = np.sum(o**2)
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def rel_mse(orig: np.ndarray, q: np.ndarray) -> float:
    """``mean((orig - q)^2) / mean(orig^2)`` (0 = exact)."""
    o = np.asarray(orig, dtype=np.float64)
    signal = np.mean(o**2)
    err = np.mean((o - np.asarray(q, dtype=np.float64)) ** 2)
    return float(err / signal) if signal > 0 else float("nan")


def tensor_stats(w: np.ndarray, *, threshold: float = 5.0) -> dict:
    """Exact distribution statistics of a (small) tensor, as for activations.

    Channels are along dimension 0 (output channels of Linear/Conv weights).
    """
    a = np.asarray(w, dtype=np.float64).reshape(-1)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    iqr = q3 - q1
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    out = (a < lo) | (a > hi)
    pct = 100.0 * out.sum() / a.size
    inside = a[~out]
    ch = np.abs(np.asarray(w, dtype=np.float64).reshape(np.shape(w)[0], -1)).max(axis=1)
    ch_med = float(np.median(ch))
    return {
        "count": int(a.size),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "q1": float(q1),
        "median": float(med),
        "q3": float(q3),
        "iqr": float(iqr),
        "lower_fence": float(lo),
        "upper_fence": float(hi),
        "outlier_count": int(out.sum()),
        "outlier_pct": float(pct),
        "significant": bool(pct > threshold),
        "whisker_low": float(inside.min()) if inside.size else float(q1),
        "whisker_high": float(inside.max()) if inside.size else float(q3),
        "n_channels": int(ch.size),
        "channel_absmax_max": float(ch.max()),
        "channel_absmax_median": ch_med,
        "channel_absmax_ratio": float(ch.max() / ch_med) if ch_med > 0 else float("inf"),
    }


@dataclass
class WeightStats:
    """One weight tensor: distribution statistics, change score and int8 error metrics.

    Attributes:
        name: the module name (what an ignore list takes), e.g. ``blocks.0.attn.qkv``.
        param: the parameter name, e.g. ``blocks.0.attn.qkv.weight``.
        change_score: the study's ``C`` (see the module docstring); ``change_rank`` 1 is highest.
        sqnr_db, rel_mse: int8 per-tensor symmetric error; ``*_per_channel`` for per-channel.
    """

    name: str
    param: str
    kind: str
    block: int | None
    shape: list[int]
    count: int
    min: float
    max: float
    mean: float
    std: float
    q1: float
    median: float
    q3: float
    iqr: float
    lower_fence: float
    upper_fence: float
    outlier_count: int
    outlier_pct: float
    significant: bool
    whisker_low: float
    whisker_high: float
    n_channels: int
    channel_absmax_max: float
    channel_absmax_median: float
    channel_absmax_ratio: float
    change_score: float
    mean_change: float
    std_change: float
    sqnr_db: float
    sqnr_db_per_channel: float
    rel_mse: float
    rel_mse_per_channel: float
    change_rank: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def quantizable_weights(model: nn.Module) -> list[tuple[str, str, nn.Module, np.ndarray]]:
    """``(module name, param name, module, float weights)`` of every Linear/Conv."""
    return [
        (name, f"{name}.weight", m, m.weight.detach().float().cpu().numpy())
        for name, m in model.named_modules()
        if name and isinstance(m, QUANTIZABLE)
    ]


def weight_stats(model: nn.Module, *, threshold: float = 5.0) -> list[WeightStats]:
    """Statistics, change score, SQNR and relative MSE of every Linear/Conv weight.

    Returned in module order; ``change_rank`` ranks them by change score, highest first (the
    study's ranking; NaN scores last).
    """
    head = head_name(model)
    entries = quantizable_weights(model)
    blocks = block_names([name for name, *_ in entries])
    rows = []
    for name, param, module, w in entries:
        score, mean_change, std_change = change_score_parts(w)
        q_t = fake_quant_per_tensor_symmetric(w)
        q_c = fake_quant_per_channel_symmetric(w, axis=0)
        kind = layer_kind(name, module, head=head)
        rows.append(
            WeightStats(
                name=name,
                param=param,
                kind=kind,
                block=None if kind == "head" else blocks[name][0],
                shape=list(w.shape),
                **tensor_stats(w, threshold=threshold),
                change_score=score,
                mean_change=mean_change,
                std_change=std_change,
                sqnr_db=sqnr_db(w, q_t),
                sqnr_db_per_channel=sqnr_db(w, q_c),
                rel_mse=rel_mse(w, q_t),
                rel_mse_per_channel=rel_mse(w, q_c),
            )
        )
    order = sorted(
        range(len(rows)),
        key=lambda i: (np.isnan(rows[i].change_score), -np.nan_to_num(rows[i].change_score)),
    )
    for rank, i in enumerate(order, start=1):
        rows[i].change_rank = rank
    return rows


def ranked_by_change(rows: list[WeightStats]) -> list[WeightStats]:
    """Rows in the study's order: change score, highest first."""
    return sorted(rows, key=lambda r: r.change_rank)


@dataclass(frozen=True)
class Histogram:
    """Counts of one tensor's values in ``len(edges) - 1`` equal bins."""

    name: str
    edges: np.ndarray
    counts: np.ndarray


def weight_histograms(model: nn.Module, *, bins: int = 60) -> list[Histogram]:
    """A histogram of every Linear/Conv weight tensor (data for the histogram grid)."""
    out = []
    for name, _, _, w in quantizable_weights(model):
        counts, edges = np.histogram(w.reshape(-1), bins=bins)
        out.append(Histogram(name, edges, counts))
    return out
