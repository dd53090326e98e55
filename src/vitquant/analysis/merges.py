"""Merging summaries of disjoint streams: moments (Chan et al.) and uniform samples (and the
streaming reservoir that draws them).

Used within one process (a batch's moments into the running ones) and across ``torchrun`` ranks
(``stats_merge``). Pure functions of their inputs, so they are tested against NumPy directly.
"""

from __future__ import annotations

import numpy as np
import torch


def chan_merge(
    a: tuple[int, float, float], b: tuple[int, float, float]
) -> tuple[int, float, float]:
    """Chan et al.'s pairwise merge of ``(count, mean, M2)`` summaries, in float64."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    if n_b == 0:
        return a
    total = n_a + n_b
    delta = mean_b - mean_a
    return total, mean_a + delta * n_b / total, m2_a + (m2_b + delta * delta * n_a * n_b / total)


def merge_samples(
    parts: list[tuple[int, np.ndarray]], size: int, rng: np.random.Generator
) -> tuple[int, np.ndarray]:
    """One uniform sample of at most ``size`` values from uniform samples of disjoint streams.

    Args:
        parts: ``(values seen, sample)`` per stream, each sample of ``min(size, seen)`` values.
        size: the merged sample's capacity.
        rng: draws how many values each stream contributes (hypergeometric) and which.

    Returns:
        ``(values seen in all, merged sample)``.
    """
    seen, values = 0, np.empty(0, dtype=np.float32)
    for m, sample in parts:
        if m == 0:
            continue
        k = min(size, seen + m)
        # How many of the k slots the new stream wins: hypergeometric over old vs new values.
        new = int(rng.hypergeometric(m, seen, k)) if seen else k
        keep = rng.choice(len(values), k - new, replace=False) if k - new else []
        pick = rng.choice(len(sample), new, replace=False) if new else []
        values = np.concatenate([values[keep], np.asarray(sample, dtype=np.float32)[pick]])
        seen += m
    return seen, values


class Reservoir:
    """A uniform random sample (without replacement) of at most ``size`` streamed values."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.rng = rng
        self.seen = 0
        self.values = np.empty(0, dtype=np.float32)

    def add(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1)
        m = flat.numel()
        if m == 0 or self.size == 0:
            return
        n = self.seen
        self.seen += m
        if n + m <= self.size:
            self.values = np.concatenate([self.values, flat.float().numpy()])
            return
        # How many of the `size` slots the new values win: hypergeometric over old vs new.
        k = min(self.size, n + m)
        new = int(self.rng.hypergeometric(m, n, k)) if n else k
        keep = self.rng.choice(len(self.values), k - new, replace=False) if k - new else []
        pick = torch.from_numpy(self.rng.choice(m, new, replace=False))
        self.values = np.concatenate([self.values[keep], flat[pick].float().numpy()])


class RankSample:
    """A uniform sample (without replacement) of ``min(size, total)`` of ``total`` values that
    will stream past, drawn upfront as sorted ranks: the values at those ranks are kept as they
    come (by ``vitquant.analysis.kernels.route_batch``), so nothing else is copied or drawn per
    batch. For a stream whose length is known before it starts (pass 2's sure outliers: pass 1
    counted them).
    """

    def __init__(self, total: int, size: int, rng: np.random.Generator):
        k = min(size, total)
        self.total = total
        picks = rng.choice(total, k, replace=False) if k else np.empty(0, np.int64)
        self.picks = np.sort(picks).astype(np.int64)
        self.picked = np.empty(k, dtype=np.float32)
        self.state = np.zeros(2, dtype=np.int64)  # [values seen, picks taken]

    @property
    def seen(self) -> int:
        return int(self.state[0])

    def values(self) -> np.ndarray:
        """The sample (in stream order); all of it once ``total`` values have streamed past."""
        return self.picked[: int(self.state[1])]
