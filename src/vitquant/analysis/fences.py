"""The IQR fences without a third pass: their windows of coarse buckets, then exact counts.

After the coarse pass each quartile is known to lie between the bounds of the buckets of the
order statistics it interpolates, so each fence (``Q1 - 1.5 IQR``, ``Q3 + 1.5 IQR``) lies in an
interval too. Keeping every value of the few buckets that interval touches (and of the next
non-empty bucket inwards, where the whisker ends) during the pass that pins the quartiles
answers, once the fences are exact, how many values lie beyond them, where the whiskers end and
which values an outlier sample may draw from. Values in buckets wholly beyond a window are
outliers for certain and are counted by the coarse histogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitquant.analysis.keys import bucket_of_float, float32_at_least, float32_at_most, float_key
from vitquant.analysis.radix import Refinement


def _bucket_floor(v: float) -> int:
    """The lowest coarse bucket holding a float32 equal to ``v`` (-0.0's for a zero)."""
    return bucket_of_float(-0.0 if v == 0 else v)


def _bucket_ceil(v: float) -> int:
    """The highest coarse bucket holding a float32 equal to ``v`` (+0.0's for a zero)."""
    return bucket_of_float(0.0 if v == 0 else v)


def fence_windows(
    q1: tuple[float, float], q3: tuple[float, float], counts: torch.Tensor, max_busy: int
) -> tuple[range, range] | None:
    """The coarse buckets the lower and the upper fence can fall in (or None).

    Args:
        q1, q3: lower and upper bounds of Q1 and Q3.
        counts: the coarse histogram in key order.
        max_busy: the most non-empty buckets the two windows may hold together.

    The intervals are widened by a relative 1e-12 for the rounding of the fences' float64
    arithmetic. None when an interval is not finite in float32 or the windows hold more than
    ``max_busy`` non-empty buckets (the caller then counts against the exact fences in a pass
    of its own).
    """
    (q1a, q1b), (q3a, q3b) = q1, q3
    eps = 1e-12 * (abs(q1a) + abs(q1b) + abs(q3a) + abs(q3b))
    lower = (q1a - 1.5 * (q3b - q1a) - eps, q1b - 1.5 * (q3a - q1b) + eps)
    upper = (q3a + 1.5 * (q3a - q1b) - eps, q3b + 1.5 * (q3b - q1a) + eps)
    if not all(np.isfinite(v) and abs(v) < 3.4e38 for v in (*lower, *upper)):
        return None
    windows = tuple(
        range(_bucket_floor(float32_at_most(lo)), _bucket_ceil(float32_at_least(hi)) + 1)
        for lo, hi in (lower, upper)
    )
    busy = sum(int((counts[w.start : w.stop] > 0).sum()) for w in windows)
    return windows if busy <= max_busy else None


def buckets_to_keep(windows: tuple[range, range], counts: torch.Tensor) -> set[int]:
    """The non-empty buckets of both windows and the next non-empty bucket inwards of each."""
    lower, upper = windows
    busy = torch.nonzero(counts).reshape(-1)
    keep = set()
    for w in windows:
        keep.update(int(b) for b in busy[(busy >= w.start) & (busy < w.stop)])
    after, before = busy[busy >= lower.stop], busy[busy < upper.start]
    keep.update(int(b[i]) for b, i in ((after, 0), (before, -1)) if len(b))
    return keep


def sure_outliers(windows: tuple[range, range], cum: torch.Tensor) -> int:
    """How many values lie in buckets wholly beyond the windows (``cum``: cumulative counts)."""
    lower, upper = windows
    below = int(cum[lower.start - 1]) if lower.start else 0
    return below + int(cum[-1]) - int(cum[upper.stop - 1])


@dataclass(frozen=True)
class WindowOutliers:
    """What the kept buckets say once the fences are exact: the outliers inside the windows
    (``count``; their distinct ``values`` with ``counts``) and the whisker ends."""

    count: int
    values: np.ndarray
    counts: np.ndarray
    whisker_low: float
    whisker_high: float


def window_outliers(
    refine: Refinement, windows: tuple[range, range], lo32: float, hi32: float
) -> WindowOutliers:
    """Outliers (``x < lo32`` or ``x > hi32``) within the windows, and the whisker ends.

    ``x < lo32`` for floats is ``key(x) < key(lo32)`` taking -0.0 for a zero fence (so -0.0 is
    not below +0.0); ``x > hi32`` likewise with +0.0.
    """
    lower, upper = windows
    k_lo = float_key(-0.0 if lo32 == 0 else lo32)
    k_hi = float_key(0.0 if hi32 == 0 else hi32)
    values, counts = refine.values_outside(k_lo, k_hi, sorted({*lower, *upper}))
    return WindowOutliers(
        count=refine.count_below_key(k_lo, lower) + refine.count_above_key(k_hi, upper),
        values=values,
        counts=counts,
        whisker_low=refine.first_at_least(k_lo),
        whisker_high=refine.last_at_most(k_hi),
    )
