"""Merging the three-pass activation statistics of ranks that each saw a shard of the images.

Under ``torchrun`` each rank of ``collect_activation_stats`` streams its own shard through a
``PointAccumulator`` per point; after every pass the ranks' accumulators are merged, the same way
on every rank (rank order, a seeded generator), before the next pass starts:

1. coarse key histograms: integer sums; min / max and per-channel absolute maxima: MIN / MAX;
   ``(count, mean, M2)``: Chan's merge in float64; value samples: a hypergeometric merge;
2. the kept buckets (the same on every rank, as they come from the merged pass-1 histogram):
   dense histograms are summed, value buffers concatenated in rank order; the samples of the
   values sure to be outliers: a hypergeometric merge;
3. (only the points that need a third pass) outlier counts: sums; whisker ends: MIN / MAX;
   outlier samples: a hypergeometric merge.

Counts are integers and order statistics come from merged histograms, so count, min, max,
quartiles, fences, outlier counts and percentages equal one process's exactly; mean and std
differ only by float64 rounding (the merge order differs); the random samples differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vitquant.analysis.merges import chan_merge, merge_samples
from vitquant.analysis.stats import PointAccumulator
from vitquant.distributed import DistContext, all_gather_objects, all_reduce_


def merge_pass1(
    accs: Sequence[PointAccumulator], ctx: DistContext, rng: np.random.Generator
) -> None:
    """Merge the moments, extremes, channel maxima, samples and coarse histograms in place."""
    for acc in accs:  # (65536,) int64 each
        acc.local_hist = acc.hist_raw.clone()  # this rank's own (its share of sure outliers)
        all_reduce_(acc.hist_raw, ctx, "sum")
    mine = [
        (a.n, a.mean, a.m2, a.min, a.max, a.chan_absmax, a.sample.seen, a.sample.values)
        for a in accs
    ]
    ranks = all_gather_objects(mine, ctx)
    for i, acc in enumerate(accs):
        parts = [r[i] for r in ranks]
        summary = (0, 0.0, 0.0)
        absmax = None
        for n, mean, m2, _, _, chan, _, _ in parts:
            summary = chan_merge(summary, (n, mean, m2))
            if chan is not None:
                absmax = chan if absmax is None else torch.maximum(absmax, chan)
        acc.n, acc.mean, acc.m2 = summary
        acc.min = min(p[3] for p in parts)
        acc.max = max(p[4] for p in parts)
        acc.chan_absmax = absmax
        acc.sample.seen, acc.sample.values = merge_samples(
            [(p[6], p[7]) for p in parts], acc.sample.size, rng
        )


def merge_pass2(
    accs: Sequence[PointAccumulator], ctx: DistContext, rng: np.random.Generator
) -> None:
    """Merge the kept buckets' values and the samples of sure outliers in place."""
    for acc in accs:
        acc.take_sure_sample()
        for slot in acc.refine.slots.values():  # the same buckets, in order, everywhere
            if slot.dense:
                all_reduce_(slot.data, ctx, "sum")
                slot.fill = slot.count
    buffers = [[s.shard() for s in a.refine.slots.values() if not s.dense] for a in accs]
    mine = [(b, a.outliers.seen, a.outliers.values) for a, b in zip(accs, buffers, strict=True)]
    ranks = all_gather_objects(mine, ctx)
    for i, acc in enumerate(accs):
        parts = [r[i] for r in ranks]
        sparse = [s for s in acc.refine.slots.values() if not s.dense]
        for j, slot in enumerate(sparse):
            slot.set_merged([p[0][j] for p in parts])
        if acc.windows is not None:
            acc.outliers.seen, acc.outliers.values = merge_samples(
                [(p[1], p[2]) for p in parts], acc.outliers.size, rng
            )


def merge_pass3(
    accs: Sequence[PointAccumulator], ctx: DistContext, rng: np.random.Generator
) -> None:
    """Merge the outlier counts, whisker ends and outlier samples in place."""
    mine = [
        (a.n_out, a.whisker_low, a.whisker_high, a.outliers.seen, a.outliers.values) for a in accs
    ]
    ranks = all_gather_objects(mine, ctx)
    for i, acc in enumerate(accs):
        parts = [r[i] for r in ranks]
        acc.n_out = sum(p[0] for p in parts)
        acc.whisker_low = min(p[1] for p in parts)
        acc.whisker_high = max(p[2] for p in parts)
        acc.outliers.seen, acc.outliers.values = merge_samples(
            [(p[3], p[4]) for p in parts], acc.outliers.size, rng
        )
