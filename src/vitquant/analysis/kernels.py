"""Per-batch kernels of the activation statistics (Numba): tight loops, without the GIL.

The statistics of ``vitquant.analysis.stats`` need, per batch and point, a histogram of the top
16 bits, the sum and shifted sum of squares, and per-channel minima and maxima (pass 1), then
the values of the few coarse buckets that matter and a sample of those sure to be outliers
(pass 2). As separate tensor operations that is six passes over memory in pass 1 and four in
pass 2, which cost ~5x the model's own forward on ``cifar_vit``
(``benchmarks/analysis_cost.py``). These kernels read each value once per statistic in tight
loops; pass 2 finds the few values it needs without a branch per value (``_busy``), then routes
each straight into its bucket's storage.

Hand-written because no library computes a radix histogram, float64 moments and per-channel
extremes of a float32 tensor without temporaries the size of the tensor; Numba (a well-kept JIT
for exactly this kind of loop) compiles them once per machine (``cache=True``).

One thread, on purpose. They run inside forward hooks, right after a PyTorch operator, while
PyTorch's OpenMP workers still spin on the other cores: on the 2-core machine, splitting a
batch across two Python threads made pass 1 slower (3.3 s against 2.3 s for one thread over
``cifar_vit``'s 1.7 G values of 1,000 images). Numba's own parallel layers do not mix safely with
that OpenMP pool and forked DataLoader workers in one process. Each kernel is tested against the
PyTorch/NumPy computation it replaces (``tests/test_analysis_kernels.py``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True, nogil=True)
def _histogram(bits, hist):  # pragma: no cover - compiled
    for i in range(bits.shape[0]):
        hist[bits[i] >> 16] += 1


# Reassociation lets LLVM vectorise the two float64 sums (lanes summed at the end).
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _sums(values, shift):  # pragma: no cover - compiled
    total = 0.0
    squares = 0.0
    for i in range(values.shape[0]):
        v = np.float64(values[i])
        total += v
        d = v - shift
        squares += d * d
    return total, squares


@numba.njit(cache=True, nogil=True)
def _extremes(values, cmin, cmax):  # pragma: no cover - compiled
    # channels last (inner == 1): vectorised across channels
    outer, channels, _ = values.shape
    for o in range(outer):
        for c in range(channels):
            v = values[o, c, 0]
            if v < cmin[c]:
                cmin[c] = v
            if v > cmax[c]:
                cmax[c] = v


def _pass1(values, bits, shift, hist, cmin, cmax):
    """Histogram, sums and extremes of a batch, in separate tight loops (each vectorises, or
    keeps its stores in L1), which beat one loop doing all three."""
    _histogram(bits.reshape(-1), hist)
    if values.shape[2] == 1:
        _extremes(values, cmin, cmax)
    else:  # channels first (heads, NCHW): NumPy's SIMD reductions along the contiguous axis
        np.fmin(cmin, np.fmin.reduce(np.fmin.reduce(values, axis=2), axis=0), out=cmin)
        np.fmax(cmax, np.fmax.reduce(np.fmax.reduce(values, axis=2), axis=0), out=cmax)
    return _sums(values.reshape(-1), shift)


SURE = -2  # route_batch's table: a value sure to be an outlier (sampled)
SKIP = -1  # route_batch's table: a value no statistic of pass 2 needs


@numba.njit(cache=True, nogil=True)
def _busy(bits, busy, idx):  # pragma: no cover - compiled
    # Positions of the values pass 2 needs (a chosen bucket or a sure outlier), without a
    # branch: most values need nothing, and a mispredicted branch per needed one costs more
    # than this loop.
    m = 0
    for i in range(bits.shape[0]):
        idx[m] = i
        m += busy[bits[i] >> 16]
    return m


@numba.njit(cache=True, nogil=True)
def _route(
    bits, idx, m, table, picks, state, picked, counts, dense, starts, fills, packed
):  # pragma: no cover - compiled
    seen = state[0]  # sure outliers met so far (all batches)
    pos = state[1]  # picks taken so far
    nxt = picks[pos] if pos < picks.shape[0] else -1
    for j in range(m):
        b = bits[idx[j]]
        s = table[b >> 16]
        if s == SURE:
            if seen == nxt:
                picked[pos] = b
                pos += 1
                nxt = picks[pos] if pos < picks.shape[0] else -1
            seen += 1
            continue
        # the order-preserving key's low 16 bits (vitquant.analysis.keys.sortable_keys: the
        # signed bits, with the 31 magnitude bits flipped for a negative float)
        k = np.int32(b)
        low = (k ^ ((k >> 31) & 0x7FFFFFFF)) & 0xFFFF
        f = fills[s]
        if f >= counts[s]:
            state[0] = seen
            state[1] = pos
            return s
        fills[s] = f + 1
        if dense[s]:
            packed[starts[s] + low] += 1
        else:
            packed[starts[s] + f] = low
    state[0] = seen
    state[1] = pos
    return -1


CHUNK = 1 << 22  # values route_batch scans at a time (its positions buffer: 16 MiB of int32)
_SCRATCH = np.empty(CHUNK + 1, dtype=np.int32)  # route_batch's positions, reused (one thread)


def _as_3d(x: torch.Tensor, cdim: int) -> np.ndarray:
    """``x`` as a C-contiguous float32 (outer, channels, inner) array, channels in ``cdim``."""
    x = x.detach().to(torch.float32).contiguous()
    if x.dim() == 0:
        x = x.reshape(1)
    shape = x.shape
    outer = int(np.prod(shape[:cdim])) if cdim else 1
    inner = int(np.prod(shape[cdim + 1 :])) if cdim + 1 < len(shape) else 1
    return x.numpy().reshape(outer, shape[cdim], inner)


def batch_summary(
    x: torch.Tensor, cdim: int, shift: float, hist: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """A batch's pass-1 summary: adds the top-16-bit counts to ``hist`` (raw bit order) and returns
    ``(sum, sum((x - shift)^2), per-channel min, per-channel max)`` (sums in float64)."""
    values = _as_3d(x, cdim)
    cmin = np.full(values.shape[1], np.inf, np.float32)
    cmax = np.full(values.shape[1], -np.inf, np.float32)
    if values.size == 0:
        return 0.0, 0.0, cmin, cmax
    total, squares = _pass1(values, values.view(np.uint32), float(shift), hist, cmin, cmax)
    return total, squares, cmin, cmax


def route_batch(x: torch.Tensor, table: np.ndarray, busy: np.ndarray, sampler, refine) -> int:
    """Pass 2 over one batch, in one read of each value: the values of the chosen buckets go to
    ``refine``'s storage (``vitquant.analysis.radix.Refinement``), and the values sure to be
    outliers are counted and those at the ranks ``sampler.picks`` kept in ``sampler.picked``.

    Args:
        x: the batch (any shape; read as float32 in memory order).
        table: by the raw top 16 bits of a value: ``SKIP``, ``SURE`` or the index of its chosen
            bucket in ``refine``.
        busy: ``table != SKIP`` as uint8.
        sampler: ``picks`` (sorted ranks among all sure outliers of the pass, int64),
            ``state`` (int64 ``[seen, taken]``, carried across batches) and ``picked`` (float32,
            one per pick).
        refine: the ``Refinement`` whose ``counts``, ``dense``, ``starts``, ``fills``, ``packed``
            receive the values.

    Returns:
        -1, or the index of a chosen bucket that met more values than pass 1 counted (the model
        is not deterministic).

    One thread: the picks and the buffers are filled in stream order (pass 2 is read-bound, and
    a second Python thread competes with PyTorch's spinning OpenMP workers between operators).
    """
    flat = x.detach().to(torch.float32).contiguous().reshape(-1).numpy().view(np.uint32)
    picked = sampler.picked.view(np.uint32)
    r = refine
    for start in range(0, len(flat), CHUNK):  # in stream order: the picks and buffers need it
        bits = flat[start : start + CHUNK]
        m = _busy(bits, busy, _SCRATCH)
        slot = _route(
            bits, _SCRATCH, m, table, sampler.picks, sampler.state, picked,
            r.counts, r.dense, r.starts, r.fills, r.packed,
        )  # fmt: skip
        if slot >= 0:
            return int(slot)
    return -1
