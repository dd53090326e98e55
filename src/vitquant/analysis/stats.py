"""Streaming activation statistics whose memory does not grow with the number of images.

Per observed point, two passes over the same images (the model is deterministic):

1. exact count, min, max, mean and std (Chan's parallel merge in float64), per-channel absolute
   maxima, a uniform random sample of values (reservoir with hypergeometric merging), and a
   65,536-bin histogram of the top 16 bits of each value (permuted into the order of an
   order-preserving 32-bit key, ``vitquant.analysis.keys``);
2. every value (its low 16 bits) of the few coarse buckets that matter
   (``vitquant.analysis.radix``): those holding the quartiles' order statistics, which pins
   their exact float32 values (a two-round radix select); and those each IQR fence can fall in.
   The coarse buckets already bound Q1 and Q3, hence each fence to a window of a few buckets:
   values beyond the windows are outliers for certain (counted by the coarse histogram,
   sampled in this pass), and those inside are compared with the exact fences afterwards. The
   buckets next to the windows give the whisker ends.

A point whose fence windows span more than ``MAX_WINDOW_BUCKETS`` non-empty buckets (or are not
finite) takes a third pass instead: exact counts against the now exact fences. Either way Q1,
median, Q3 (``np.percentile``'s linear interpolation), the fences, the outlier percentage and the
whiskers equal NumPy's over the concatenated outputs, while memory is fixed before each pass:
the 65,536-bin histogram, the kept buckets (each at most 65,536 values or bins) and the bounded
samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from vitquant.analysis.fences import (
    buckets_to_keep,
    fence_windows,
    sure_outliers,
    window_outliers,
)
from vitquant.analysis.hooks import Point, observation_points, observe
from vitquant.analysis.kernels import SKIP, SURE, batch_summary, route_batch
from vitquant.analysis.keys import (
    BUCKETS,
    RAW_OF_BUCKET,
    bucket_bounds,
    float32_at_least,
    float32_at_most,
)
from vitquant.analysis.merges import RankSample, Reservoir, chan_merge, merge_samples
from vitquant.analysis.radix import Refinement
from vitquant.distributed import DistContext
from vitquant.errors import VitquantError

QUANTILES = (0.25, 0.5, 0.75)
# A fence's uncertainty window (see ``PointAccumulator.begin2``) may span this many non-empty
# coarse buckets; a wider one (rare: a quartile in a huge bucket) gets a third pass instead.
MAX_WINDOW_BUCKETS = 16


def _lerp(a: float, b: float, t: float) -> float:
    # NumPy's percentile interpolation (numpy.lib._function_base_impl._lerp).
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _ranks(n: int, q: float) -> tuple[int, int, float]:
    """0-based order statistics around position ``(n - 1) * q`` and the interpolation weight."""
    h = (n - 1) * q
    lo = int(np.floor(h))
    return lo, min(lo + 1, n - 1), h - lo


@dataclass
class PointStats:
    """Statistics of one observed point (see the module docstring for how they are computed).

    ``outlier_pct`` is in percent; the fences are ``Q1 - 1.5 IQR`` and ``Q3 + 1.5 IQR``;
    ``channel_absmax_ratio`` is max / median of the per-channel absolute maxima.
    """

    point: str
    module: str
    kind: str
    block: int | None
    block_name: str | None
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
    sample: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32), repr=False)
    outlier_sample: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32), repr=False)
    channel_absmax: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32), repr=False)

    @property
    def name(self) -> str:
        """The module name (what an ignore list takes)."""
        return self.module

    def to_dict(self, *, samples: bool = False) -> dict:
        """JSON-ready fields; ``name`` is the module; arrays only with ``samples=True``."""
        d = asdict(self)
        arrays = ("sample", "outlier_sample", "channel_absmax")
        for key in arrays:
            value = d.pop(key)
            if samples:
                d[key] = np.asarray(value).tolist()
        return {"name": self.module, **d}


class PointAccumulator:
    """Streaming statistics of one point; feed every batch to each pass in turn.

    Pass 1 is ``update1``; ``begin2`` / ``update2`` / ``end2`` are pass 2; only when
    ``needs_pass3`` is set after ``end2`` does the point need ``update3`` (a third pass).
    """

    def __init__(
        self,
        point: Point | None = None,
        *,
        channel_dim: int = -1,
        threshold: float = 5.0,
        sample_size: int = 2000,
        rng: np.random.Generator | None = None,
    ):
        self.point = point
        self.channel_dim = point.channel_dim if point is not None else channel_dim
        self.threshold = threshold
        rng = rng if rng is not None else np.random.default_rng(0)
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.chan_absmax: torch.Tensor | None = None
        self.hist_raw = torch.zeros(BUCKETS, dtype=torch.int64)
        self.sample = Reservoir(sample_size, rng)
        self.outliers = Reservoir(sample_size, rng)
        self.refine: Refinement | None = None
        self.local_hist: torch.Tensor | None = None  # under torchrun: pass 1's own histogram
        self.sure_sample: RankSample | None = None
        self.windows: tuple[range, range] | None = None  # the fences' uncertainty windows
        self.n_sure_out = 0  # values in buckets wholly beyond a fence's window
        self.quartiles: tuple[float, float, float] | None = None
        self.needs_pass3 = False
        self.n_out = 0
        self.whisker_low = float("inf")
        self.whisker_high = float("-inf")

    # -- pass 1 ------------------------------------------------------------------------------
    def update1(self, x: torch.Tensor) -> None:
        """Moments, extremes, channel maxima, value sample and the coarse key histogram."""
        x = x.detach().float()
        if x.numel() == 0:
            return
        m = x.numel()
        cdim = self.channel_dim % x.dim() if x.dim() > 1 else 0
        # Squares are summed around a shift near the mean (the running mean; the batch's first
        # value at first), in float64: M2 = sum((x - c)^2) - m (mean - c)^2 loses nothing.
        shift = self.mean if self.n else float(x.reshape(-1)[0])
        shift = shift if np.isfinite(shift) else 0.0
        total, squares, lo, hi = batch_summary(x, cdim, shift, self.hist_raw.numpy())
        mean_b = total / m
        m2_b = max(squares - m * (mean_b - shift) ** 2, 0.0)
        self.n, self.mean, self.m2 = chan_merge((self.n, self.mean, self.m2), (m, mean_b, m2_b))
        self.min = min(self.min, float(lo.min()))
        self.max = max(self.max, float(hi.max()))
        absmax = torch.from_numpy(np.maximum(hi, -lo))
        self.chan_absmax = (
            absmax if self.chan_absmax is None else torch.maximum(self.chan_absmax, absmax)
        )
        self.sample.add(x)

    def _rank_buckets(self, cum: torch.Tensor) -> dict[int, int]:
        """0-based rank -> coarse bucket, for the order statistics the quartiles interpolate."""
        ranks = {r for q in QUANTILES for r in _ranks(self.n, q)[:2]}
        return {r: int(torch.searchsorted(cum, torch.tensor(r), right=True)) for r in ranks}

    def _quartile_bounds(self, q: float, rank_bucket: dict[int, int]) -> tuple[float, float]:
        """Bounds of quartile ``q`` from the buckets of the order statistics it interpolates."""
        lo_r, hi_r, _ = _ranks(self.n, q)
        lo = max(bucket_bounds(rank_bucket[lo_r])[0], self.min)
        return lo, min(bucket_bounds(rank_bucket[hi_r])[1], self.max)

    # -- pass 2 ------------------------------------------------------------------------------
    def begin2(self) -> None:
        """Choose the buckets to keep every value of: the quartiles' order statistics, the
        fences' windows and the buckets next to them (where the whiskers end)."""
        if self.n == 0:
            raise VitquantError("a point saw no values; is the calibration set empty?")
        counts = self.hist_raw[RAW_OF_BUCKET]  # in key (= float) order
        self.hist_raw = torch.empty(0, dtype=torch.int64)  # free it
        cum = torch.cumsum(counts, 0)
        self.rank_bucket = self._rank_buckets(cum)
        chosen = set(self.rank_bucket.values())
        # route_batch's table, by raw top bits: SKIP, SURE or the index of a chosen bucket
        self.table = np.full(BUCKETS, SKIP, dtype=np.int32)
        sure_total = 0
        self.windows = fence_windows(
            self._quartile_bounds(0.25, self.rank_bucket),
            self._quartile_bounds(0.75, self.rank_bucket),
            counts,
            MAX_WINDOW_BUCKETS,
        )
        if self.windows is not None:
            chosen |= buckets_to_keep(self.windows, counts)
            self.n_sure_out = sure_outliers(self.windows, cum)
            sure = torch.ones(BUCKETS, dtype=torch.bool)
            sure[self.windows[0].start : self.windows[1].stop] = False
            sure[sorted(chosen)] = False  # a chosen bucket's values are kept, not sampled
            self.table[RAW_OF_BUCKET[sure].numpy()] = SURE
            # this process' own sure outliers (under torchrun its pass-1 histogram before merging)
            mine = counts if self.local_hist is None else self.local_hist[RAW_OF_BUCKET]
            sure_total = int(mine[sure].sum())
        self.local_hist = None
        self.refine = Refinement(cum, chosen)
        self.table[RAW_OF_BUCKET[sorted(chosen)].numpy()] = np.arange(len(chosen), dtype=np.int32)
        self.sure_sample = RankSample(sure_total, self.outliers.size, self.outliers.rng)
        self.busy = (self.table != SKIP).astype(np.uint8)

    def update2(self, x: torch.Tensor) -> None:
        """Every value of the chosen buckets; the values sure to be outliers are sampled."""
        slot = route_batch(x, self.table, self.busy, self.sure_sample, self.refine)
        if slot >= 0:
            self.refine.disagrees()

    def take_sure_sample(self) -> None:
        """Move pass 2's sample of sure outliers into ``outliers`` (once; before merging)."""
        sample, self.sure_sample = self.sure_sample, None
        if sample is None:
            return
        if sample.seen != sample.total:
            self.refine.disagrees()
        self.outliers.seen, self.outliers.values = sample.total, sample.values()

    def end2(self) -> None:
        """Exact quartiles and fences; outlier count, whiskers and outlier sample unless the
        point needs a third pass."""
        self.take_sure_sample()
        targets = {r: self.refine.value_at_rank(r, b) for r, b in self.rank_bucket.items()}
        qs = []
        for q in QUANTILES:
            lo, hi, t = _ranks(self.n, q)
            qs.append(_lerp(targets[lo], targets[hi], t))
        self.quartiles = (qs[0], qs[1], qs[2])
        q1, _, q3 = self.quartiles
        iqr = q3 - q1
        self.fences = (q1 - 1.5 * iqr, q3 + 1.5 * iqr)
        # For float32 x: x < lo  <=>  x < (smallest float32 >= lo); likewise for hi. So the
        # float32 comparisons count exactly what a float64 comparison would.
        self._lo32 = float32_at_least(self.fences[0])
        self._hi32 = float32_at_most(self.fences[1])
        self.needs_pass3 = self.windows is None
        if not self.needs_pass3:
            self._count_outliers()
        self.refine = self.table = self.busy = None  # free the kept values and the table

    def _count_outliers(self) -> None:
        """Outliers, whiskers and outlier sample from the kept buckets and the sure outliers."""
        found = window_outliers(self.refine, self.windows, self._lo32, self._hi32)
        self.n_out = self.n_sure_out + found.count
        self.whisker_low, self.whisker_high = found.whisker_low, found.whisker_high
        rng, size = self.outliers.rng, self.outliers.size
        take = min(size, found.count)
        drawn = np.repeat(found.values, rng.multivariate_hypergeometric(found.counts, take))
        self.outliers.seen, self.outliers.values = merge_samples(
            [(self.outliers.seen, self.outliers.values), (found.count, drawn)], size, rng
        )

    # -- pass 3 (only when needs_pass3) ------------------------------------------------------
    def update3(self, x: torch.Tensor) -> None:
        """Exact outlier counts against the fences, whisker ends and an outlier sample."""
        x = x.detach().float().reshape(-1)
        out = (x < self._lo32) | (x > self._hi32)
        n_out = int(out.sum())
        self.n_out += n_out
        if n_out:
            outliers = x[out]
            self.outliers.add(outliers)
            if n_out < x.numel():
                self.whisker_low = min(self.whisker_low, x.masked_fill(out, np.inf).min().item())
                self.whisker_high = max(self.whisker_high, x.masked_fill(out, -np.inf).max().item())
        else:
            lo, hi = torch.aminmax(x)
            self.whisker_low = min(self.whisker_low, lo.item())
            self.whisker_high = max(self.whisker_high, hi.item())

    def result(self) -> PointStats:
        p = self.point
        q1, med, q3 = self.quartiles
        lo, hi = self.fences
        pct = 100.0 * self.n_out / self.n
        ch = self.chan_absmax.reshape(-1).numpy().astype(np.float32)
        ch_med = float(np.median(ch))
        ch_max = float(ch.max())
        return PointStats(
            point=p.point if p else "",
            module=p.module if p else "",
            kind=p.kind if p else "",
            block=p.block if p else None,
            block_name=p.block_name if p else None,
            count=self.n,
            min=self.min,
            max=self.max,
            mean=self.mean,
            std=float(np.sqrt(self.m2 / self.n)),
            q1=q1,
            median=med,
            q3=q3,
            iqr=q3 - q1,
            lower_fence=lo,
            upper_fence=hi,
            outlier_count=self.n_out,
            outlier_pct=pct,
            significant=pct > self.threshold,
            whisker_low=self.whisker_low if self.n_out < self.n else q1,
            whisker_high=self.whisker_high if self.n_out < self.n else q3,
            n_channels=len(ch),
            channel_absmax_max=ch_max,
            channel_absmax_median=ch_med,
            channel_absmax_ratio=ch_max / ch_med if ch_med > 0 else float("inf"),
            sample=self.sample.values,
            outlier_sample=self.outliers.values,
            channel_absmax=ch,
        )


def stream_stats(
    batches, *, channel_dim: int = -1, threshold: float = 5.0, sample_size: int = 2000, seed=0
) -> PointStats:
    """Statistics of a re-iterable sequence of tensors (a list, or a function returning one).

    The array-level entry point of the same three passes ``collect_activation_stats`` runs.
    """
    acc = PointAccumulator(
        channel_dim=channel_dim,
        threshold=threshold,
        sample_size=sample_size,
        rng=np.random.default_rng(seed),
    )
    source = batches if callable(batches) else (lambda: batches)
    for x in source():
        acc.update1(torch.as_tensor(x))
    acc.begin2()
    for x in source():
        acc.update2(torch.as_tensor(x))
    acc.end2()
    if acc.needs_pass3:
        for x in source():
            acc.update3(torch.as_tensor(x))
    return acc.result()


@torch.no_grad()
def collect_activation_stats(
    model: nn.Module,
    bundle,
    spec,
    *,
    role: str = "calib",
    limit: int | None = None,
    threshold: float = 5.0,
    batch_size: int = 64,
    sample_size: int = 2000,
    seed: int = 0,
    progress: bool = True,
    ctx: DistContext | None = None,
) -> list[PointStats]:
    """Activation statistics of every observation point over ``role`` (three passes).

    With a distributed ``ctx`` (``torchrun``) each rank streams its shard of the images and the
    accumulators are merged after every pass (``vitquant.analysis.stats_merge``): every rank
    returns the statistics of all the images, the exact figures equal to one process's.

    Args:
        model: float model; put in eval mode.
        bundle: the ``DataBundle``.
        spec: the model's ``ModelSpec`` (``family`` decides the ViT-only points).
        role: the images to run (``calib`` by default; analysis never looks at ``test``).
        limit: only the first ``limit`` images of the role.
        threshold: a point is ``significant`` when its outlier percentage exceeds this.
        batch_size: images per forward pass.
        sample_size: size of the random value sample and of the outlier sample per point.
        seed: seed of the samples.
        progress: show a progress bar per pass (on rank 0).
        ctx: this process's place in a ``torchrun`` job (None: a single process).

    Returns:
        One ``PointStats`` per point, in forward order.
    """
    model.eval()
    n_images = len(bundle.role(role)) if limit is None else min(limit, len(bundle.role(role)))
    if n_images == 0:
        raise VitquantError(f"no {role} images to analyse; pass --calib N with N > 0.")
    example, _ = next(bundle.batches(role, spec, batch_size=min(batch_size, 2), limit=limit))
    points = observation_points(model, example, family=spec.family)
    shard = ctx.shard if ctx is not None else None
    # Each rank samples its own stream with its own generator; the merges draw from a generator
    # shared by all ranks, seeded apart from every rank's ([seed, world], world > rank).
    rng = np.random.default_rng(seed if shard is None else [seed, ctx.rank])
    merge_rng = np.random.default_rng([seed, ctx.world]) if shard is not None else None
    accs = {
        p.point: PointAccumulator(p, threshold=threshold, sample_size=sample_size, rng=rng)
        for p in points
    }
    if shard is not None:
        from vitquant.analysis import stats_merge

        progress = progress and ctx.is_main

    def run(step: str, update, observed=points) -> None:
        desc = f"activation stats ({step})" if progress else None
        with observe(model, observed, lambda p, out: update(accs[p.point], out)):
            for x, _ in bundle.batches(
                role, spec, batch_size=batch_size, limit=limit, progress=desc, shard=shard
            ):
                model(x)

    ordered = [accs[p.point] for p in points]
    run("1/2 moments", PointAccumulator.update1)
    if shard is not None:
        stats_merge.merge_pass1(ordered, ctx, merge_rng)
    for acc in ordered:
        acc.begin2()
    run("2/2 quartiles, outliers", PointAccumulator.update2)
    if shard is not None:
        stats_merge.merge_pass2(ordered, ctx, merge_rng)
    for acc in ordered:
        acc.end2()
    third = [p for p in points if accs[p.point].needs_pass3]  # the same on every rank
    if third:
        run(f"3 outliers of {len(third)} points", PointAccumulator.update3, third)
        if shard is not None:
            stats_merge.merge_pass3([accs[p.point] for p in third], ctx, merge_rng)
    return [acc.result() for acc in ordered]
