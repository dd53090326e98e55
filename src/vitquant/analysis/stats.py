"""Streaming activation statistics whose memory does not grow with the number of images.

Per observed point, three passes over the same images (the model is deterministic):

1. exact count, min, max, mean and std (Chan's parallel merge in float64), per-channel absolute
   maxima, a uniform random sample of values (reservoir with hypergeometric merging), and a
   65,536-bin histogram of the top 16 bits of each value (permuted into the order of an
   order-preserving 32-bit key);
2. for the few top-16-bit buckets that hold a needed order statistic, a histogram of the low
   16 bits - which pins the exact float32 value (a two-round radix select);
3. with the now exact quartiles (``np.percentile``'s linear interpolation), exact counts of the
   values outside the IQR fences, the whisker ends, and a random sample of the outliers.

So Q1, median, Q3, the fences and the outlier percentage equal NumPy's over the concatenated
outputs, while memory is a fixed ~0.5 MB of histogram per point plus the bounded samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from vitquant.analysis.hooks import Point, observation_points, observe
from vitquant.analysis.merges import Reservoir, chan_merge
from vitquant.distributed import DistContext
from vitquant.errors import VitquantError

_BUCKETS = 1 << 16
QUANTILES = (0.25, 0.5, 0.75)


def sortable_keys(x: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 keys of float32 values: ``a < b`` iff ``key(a) < key(b)``.

    Negative floats get their 31 magnitude bits flipped, so the signed integer order of the keys
    is the float order (-0.0 sorts just below +0.0). ``key >> 16`` is the coarse bucket.
    """
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _bucket(keys: torch.Tensor) -> torch.Tensor:
    """Top 16 bits of the keys as an index in ``[0, 65536)``."""
    return (keys >> 16) + (_BUCKETS // 2)


def _raw_of_bucket() -> torch.Tensor:
    """For each key bucket (``_bucket``), the matching top-16-bit pattern of the raw float bits.

    ``key >> 16 == t ^ ((t >> 15) & 0x7FFF)`` for the raw top bits ``t`` (an involution), so a
    histogram of raw top bits is permuted into key order without computing keys per value.
    """
    t = torch.arange(_BUCKETS, dtype=torch.int32) - _BUCKETS // 2
    return (t ^ ((t >> 15) & 0x7FFF)) & 0xFFFF


_RAW_OF_BUCKET = _raw_of_bucket().long()


def key_to_float(bucket: int, low: int) -> float:
    """The float32 value whose key has top 16 bits ``bucket`` (as from ``_bucket``) and ``low``."""
    k = ((bucket - _BUCKETS // 2) << 16) | low
    if k < 0:
        k ^= 0x7FFFFFFF
    return float(np.array([k], dtype=np.int64).astype(np.int32).view(np.float32)[0])


def _lerp(a: float, b: float, t: float) -> float:
    # NumPy's percentile interpolation (numpy.lib._function_base_impl._lerp).
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _ranks(n: int, q: float) -> tuple[int, int, float]:
    """0-based order statistics around position ``(n - 1) * q`` and the interpolation weight."""
    h = (n - 1) * q
    lo = int(np.floor(h))
    return lo, min(lo + 1, n - 1), h - lo


def _channel_minmax(x: torch.Tensor, cdim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel min and max of ``x`` with channels in dimension ``cdim``."""
    if x.dim() <= 1:
        return x.reshape(-1), x.reshape(-1)
    if cdim == x.dim() - 1 and x.is_contiguous():
        return torch.aminmax(x.reshape(-1, x.shape[-1]), dim=0)  # (tokens, C) -> (C,)
    dims = [d for d in range(x.dim()) if d != cdim]
    return x.amin(dim=dims), x.amax(dim=dims)


def _float32_at_least(v: float) -> float:
    """The smallest float32 that is >= ``v``."""
    f = np.float32(v)
    if float(f) < v:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


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
    """Three-pass streaming statistics of one point; feed every batch to each pass in turn."""

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
        self.hist_raw = torch.zeros(_BUCKETS, dtype=torch.int64)
        self.sample = Reservoir(sample_size, rng)
        self.outliers = Reservoir(sample_size, rng)
        self.targets: dict[int, float] = {}  # rank -> value
        self.low_hists: dict[int, torch.Tensor] = {}  # top-16-bit bucket -> low-16-bit histogram
        self.below: dict[int, int] = {}  # bucket -> values below it (from pass 2)
        self.quartiles: tuple[float, float, float] | None = None
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
        lo, hi = _channel_minmax(x, cdim)
        lo_b, hi_b = lo.min().item(), hi.max().item()
        self.min = min(self.min, lo_b)
        self.max = max(self.max, hi_b)
        scale = max(abs(lo_b), abs(hi_b))
        # float32 moments unless squares would under/overflow float32.
        xm = x if 1e-15 < scale < 1e15 or scale == 0 else x.double()
        var_b, mean_b = torch.var_mean(xm, correction=0)
        mean_b, m2_b = mean_b.item(), var_b.item() * m
        self.n, self.mean, self.m2 = chan_merge((self.n, self.mean, self.m2), (m, mean_b, m2_b))
        absmax = torch.maximum(hi, -lo)
        self.chan_absmax = (
            absmax if self.chan_absmax is None else torch.maximum(self.chan_absmax, absmax)
        )
        # Top 16 raw bits (sign, exponent, 7 mantissa bits); mapped to key order in begin2.
        raw = (x.contiguous().view(torch.int32) >> 16) & 0xFFFF
        self.hist_raw += torch.bincount(raw.reshape(-1), minlength=_BUCKETS)
        self.sample.add(x)

    def _needed_ranks(self) -> list[int]:
        ranks = set()
        for q in QUANTILES:
            lo, hi, _ = _ranks(self.n, q)
            ranks.update((lo, hi))
        return sorted(ranks)

    # -- pass 2 ------------------------------------------------------------------------------
    def begin2(self) -> None:
        if self.n == 0:
            raise VitquantError("a point saw no values; is the calibration set empty?")
        cum = torch.cumsum(self.hist_raw[_RAW_OF_BUCKET], 0)  # counts in key (= float) order
        self.hist_raw = torch.empty(0, dtype=torch.int64)  # free it
        self.rank_bucket: dict[int, int] = {}
        for r in self._needed_ranks():
            bucket = int(torch.searchsorted(cum, torch.tensor(r), right=True))
            self.rank_bucket[r] = bucket
            self.low_hists.setdefault(bucket, torch.zeros(_BUCKETS, dtype=torch.int64))
            # Values below the bucket (pass 1 and 2 see the same outputs: the model is
            # deterministic on a fixed input).
            self.below[bucket] = int(cum[bucket - 1]) if bucket else 0
        # A float pre-filter (a superset of the wanted buckets' values): one bucketize per batch
        # instead of computing every value's key; the exact bucket is re-derived on the subset.
        spans: list[list[float]] = []
        for bucket in sorted(self.low_hists):
            lo = float(np.nextafter(np.float32(key_to_float(bucket, 0)), np.float32(-np.inf)))
            hi = key_to_float(bucket, 0xFFFF)
            lo, hi = (-np.inf if np.isnan(lo) else lo), (np.inf if np.isnan(hi) else hi)
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo, hi])
        self.edges = torch.tensor([v for span in spans for v in span], dtype=torch.float32)

    def update2(self, x: torch.Tensor) -> None:
        """Low-16-bit histograms of the buckets holding a quartile's order statistics."""
        x = x.detach().float().reshape(-1)
        inside = (torch.bucketize(x, self.edges) & 1).bool()  # odd index: in a (lo, hi] span
        keys = sortable_keys(x[inside])
        buckets = _bucket(keys)
        for bucket, hist in self.low_hists.items():
            hist += torch.bincount(keys[buckets == bucket] & 0xFFFF, minlength=_BUCKETS)

    def end2(self) -> None:
        for r, bucket in self.rank_bucket.items():
            cum = torch.cumsum(self.low_hists[bucket], 0)
            within = min(max(r - self.below[bucket], 0), int(cum[-1]) - 1)
            low = int(torch.searchsorted(cum, torch.tensor(within), right=True))
            self.targets[r] = key_to_float(bucket, low)
        qs = []
        for q in QUANTILES:
            lo, hi, t = _ranks(self.n, q)
            qs.append(_lerp(self.targets[lo], self.targets[hi], t))
        self.quartiles = (qs[0], qs[1], qs[2])
        self.low_hists = {}  # free the histograms
        q1, _, q3 = self.quartiles
        iqr = q3 - q1
        self.fences = (q1 - 1.5 * iqr, q3 + 1.5 * iqr)
        # For float32 x: x < lo  <=>  x < (smallest float32 >= lo); likewise for hi. So pass 3
        # compares in float32 and still counts exactly what a float64 comparison would.
        self._lo32 = _float32_at_least(self.fences[0])
        self._hi32 = -_float32_at_least(-self.fences[1])

    # -- pass 3 ------------------------------------------------------------------------------
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

    def run(step: str, update) -> None:
        desc = f"activation stats ({step})" if progress else None
        with observe(model, points, lambda p, out: update(accs[p.point], out)):
            for x, _ in bundle.batches(
                role, spec, batch_size=batch_size, limit=limit, progress=desc, shard=shard
            ):
                model(x)

    ordered = [accs[p.point] for p in points]
    run("1/3 moments", PointAccumulator.update1)
    if shard is not None:
        stats_merge.merge_pass1(ordered, ctx, merge_rng)
    for acc in ordered:
        acc.begin2()
    run("2/3 quartiles", PointAccumulator.update2)
    if shard is not None:
        stats_merge.merge_pass2(ordered, ctx)
    for acc in ordered:
        acc.end2()
    run("3/3 outliers", PointAccumulator.update3)
    if shard is not None:
        stats_merge.merge_pass3(ordered, ctx, merge_rng)
    return [acc.result() for acc in ordered]
