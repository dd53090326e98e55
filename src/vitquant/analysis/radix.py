"""The second round of the radix select: every value of a few coarse buckets, kept exactly.

After the coarse pass (a histogram of the keys' top 16 bits, ``vitquant.analysis.keys``) the
count of every bucket is known. ``BucketValues`` then keeps the low 16 bits of every value that
falls in one chosen bucket: as a buffer of exactly that many keys when the bucket holds at most
65,536 values (most of the tail buckets hold a handful), as a dense 65,536-bin histogram
otherwise. Either way the memory is fixed before the pass starts and does not grow with the
number of images; ``Refinement`` answers the order-statistic and threshold queries the quartiles,
outlier counts and whiskers need from the chosen buckets.

Hand-written: no library offers a streamed radix select (see ``vitquant.analysis.keys``).
"""

from __future__ import annotations

import numpy as np
import torch

from vitquant.analysis.keys import BUCKETS, keys_to_floats
from vitquant.errors import VitquantError

_NONDETERMINISTIC = (
    "the model's outputs changed between two passes over the same images; the exact "
    "statistics need a deterministic model in eval mode (no dropout, no random augmentation)."
)


class BucketValues:
    """The low 16 bits of every value in one coarse ``bucket`` whose total ``count`` is known.

    A view into its ``Refinement``'s packed storage (``data``): a buffer of exactly ``count``
    low bits when the bucket holds at most 65,536 values, a dense 65,536-bin histogram
    otherwise. ``fill`` (how many values were recorded) lives in the refinement's ``fills``, which
    the pass-2 kernel (``vitquant.analysis.kernels.route_batch``) advances.
    """

    def __init__(self, bucket: int, count: int, data: torch.Tensor, fills: np.ndarray, index: int):
        self.bucket = bucket
        self.count = count
        self.dense = count > BUCKETS
        self.data = data
        self._fills = fills
        self._index = index

    @property
    def fill(self) -> int:
        return int(self._fills[self._index])

    @fill.setter
    def fill(self, value: int) -> None:
        self._fills[self._index] = value

    def shard(self) -> torch.Tensor:
        """What this process recorded (buffer mode: the filled part)."""
        return self.data if self.dense else self.data[: self.fill]

    def set_merged(self, parts: list[torch.Tensor]) -> None:
        """Buffer mode: replace the recorded keys by those of every rank (``shard()`` of each).

        (A dense histogram is summed across ranks in place instead.)"""
        self.data = torch.cat(parts)
        self.fill = len(self.data)

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct keys in the bucket and how many values have each."""
        if self.dense:
            low = np.flatnonzero(self.data.numpy())
            counts = self.data.numpy()[low].astype(np.int64)
        else:
            if self.fill != self.count:
                raise VitquantError(_NONDETERMINISTIC)
            low, counts = np.unique(self.data.numpy(), return_counts=True)
        if int(counts.sum()) != self.count:
            raise VitquantError(_NONDETERMINISTIC)
        keys = ((self.bucket - BUCKETS // 2) << 16) | low.astype(np.int64)
        return keys, counts.astype(np.int64)


class Refinement:
    """Exact queries over the values of the chosen buckets.

    Args:
        cum: the cumulative coarse histogram in key order (``cum[b]`` values up to bucket ``b``).
        buckets: the buckets to keep every value of.
    """

    def __init__(self, cum: torch.Tensor, buckets: set[int]):
        chosen = sorted(buckets)
        self._below = {b: int(cum[b - 1]) if b else 0 for b in chosen}  # not all of cum
        self.counts = np.array([int(cum[b]) - self._below[b] for b in chosen], dtype=np.int64)
        self.dense = self.counts > BUCKETS
        sizes = np.where(self.dense, BUCKETS, self.counts)
        self.starts = (np.cumsum(sizes) - sizes).astype(np.int64)
        dtype = np.int32 if int(self.counts.max(initial=0)) < 2**31 else np.int64
        self.packed = np.zeros(int(sizes.sum()), dtype=dtype)  # buffers and dense histograms
        self.fills = np.zeros(len(chosen), dtype=np.int64)
        view = torch.from_numpy(self.packed)
        self.slots = {
            b: BucketValues(b, int(c), view[a : a + int(n)], self.fills, i)
            for i, (b, c, a, n) in enumerate(
                zip(chosen, self.counts, self.starts, sizes, strict=True)
            )
        }
        self._distinct: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def below(self, bucket: int) -> int:
        """How many values lie in buckets before ``bucket`` (a chosen one)."""
        return self._below[bucket]

    def disagrees(self) -> None:
        """Pass 2 met more (or fewer) values somewhere than pass 1 counted there."""
        raise VitquantError(_NONDETERMINISTIC)

    def distinct(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        if bucket not in self._distinct:
            self._distinct[bucket] = self.slots[bucket].distinct()
        return self._distinct[bucket]

    def _each(self, buckets):
        """``(keys, counts)`` of each non-empty chosen bucket among ``buckets``."""
        for b in buckets:
            if b in self.slots and self.slots[b].count:
                yield self.distinct(b)

    def value_at_rank(self, rank: int, bucket: int) -> float:
        """The value of 0-based order statistic ``rank``, which lies in ``bucket``."""
        keys, counts = self.distinct(bucket)
        within = rank - self.below(bucket)
        i = int(np.searchsorted(np.cumsum(counts), within, side="right"))
        return float(keys_to_floats(keys[[min(i, len(keys) - 1)]])[0])

    def count_below_key(self, key: int, buckets: range) -> int:
        """Values with a key below ``key`` among the chosen ``buckets`` (a key range)."""
        return sum(int(counts[keys < key].sum()) for keys, counts in self._each(buckets))

    def count_above_key(self, key: int, buckets: range) -> int:
        """Values with a key above ``key`` among the chosen ``buckets``."""
        return sum(int(counts[keys > key].sum()) for keys, counts in self._each(buckets))

    def first_at_least(self, key: int) -> float | None:
        """The smallest value with a key >= ``key`` among the chosen buckets."""
        for b in self.slots:
            if self.slots[b].count and ((b - BUCKETS // 2) << 16) | 0xFFFF >= key:
                keys, _ = self.distinct(b)
                hit = keys[keys >= key]
                if len(hit):
                    return float(keys_to_floats(hit[:1])[0])
        return None

    def last_at_most(self, key: int) -> float | None:
        """The largest value with a key <= ``key`` among the chosen buckets."""
        for b in reversed(self.slots):
            if self.slots[b].count and (b - BUCKETS // 2) << 16 <= key:
                keys, _ = self.distinct(b)
                hit = keys[keys <= key]
                if len(hit):
                    return float(keys_to_floats(hit[-1:])[0])
        return None

    def values_outside(self, lo_key: int, hi_key: int, buckets) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values (float32) with a key below ``lo_key`` or above ``hi_key`` among the
        chosen ``buckets`` (each listed once), with their counts."""
        vals, cnts = [np.empty(0, np.float32)], [np.empty(0, np.int64)]
        for keys, counts in self._each(buckets):
            out = (keys < lo_key) | (keys > hi_key)
            vals.append(keys_to_floats(keys[out]))
            cnts.append(counts[out])
        return np.concatenate(vals), np.concatenate(cnts)
