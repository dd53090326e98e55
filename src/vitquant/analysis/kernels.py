"""Fused per-batch kernels of the activation statistics (Numba), one read of each value per pass.

The statistics of ``vitquant.analysis.stats`` need, per batch and point, a histogram of the top
16 bits, the sum and shifted sum of squares, and per-channel minima and maxima (pass 1), then
the few values whose coarse bucket matters (pass 2). As separate tensor operations that is six
passes over memory in pass 1 and four in pass 2, which cost ~5x the model's own forward on
``cifar_vit`` (``benchmarks/analysis_cost.py``). These kernels do each pass in one loop.

Hand-written because no library fuses a radix histogram with moments and extremes; Numba (a
well-kept JIT for exactly this kind of loop) compiles them once per machine (``cache=True``).
They are single-threaded on purpose: Numba's parallel threading layers do not mix safely with
PyTorch's OpenMP pool and forked DataLoader workers in one process. Each kernel is tested
against the PyTorch/NumPy computation it replaces (``tests/test_analysis_kernels.py``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True, nogil=True)
def _pass1(values, bits, shift, hist, cmin, cmax):  # pragma: no cover - compiled
    outer, channels, inner = values.shape
    total = 0.0
    squares = 0.0
    for o in range(outer):
        for c in range(channels):
            lo = cmin[c]
            hi = cmax[c]
            for i in range(inner):
                v = values[o, c, i]
                hist[bits[o, c, i] >> 16] += 1
                total += v
                d = np.float64(v) - shift
                squares += d * d
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
            cmin[c] = lo
            cmax[c] = hi
    return total, squares


@numba.njit(cache=True, nogil=True)
def _pass2(values, bits, table):  # pragma: no cover - compiled
    n = values.shape[0]
    sure = np.empty(n, np.float32)
    kept = np.empty(n, np.int32)
    n_sure = 0
    n_kept = 0
    for i in range(n):
        b = bits[i]
        cls = table[b >> 16]
        if cls == 1:
            sure[n_sure] = values[i]
            n_sure += 1
        elif cls == 2:
            # the order-preserving key (vitquant.analysis.keys.sortable_keys): the signed
            # bits, with the 31 magnitude bits flipped for a negative float
            k = np.int64(b)
            if k >= 0x80000000:
                k = (k - 0x100000000) ^ 0x7FFFFFFF
            kept[n_kept] = k
            n_kept += 1
    return sure[:n_sure], kept[:n_kept]


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
    """One read of a batch: adds the top-16-bit counts to ``hist`` (raw bit order) and returns
    ``(sum, sum((x - shift)^2), per-channel min, per-channel max)`` (sums in float64)."""
    values = _as_3d(x, cdim)
    channels = values.shape[1]
    cmin = np.full(channels, np.inf, np.float32)
    cmax = np.full(channels, -np.inf, np.float32)
    total, squares = _pass1(values, values.view(np.uint32), float(shift), hist, cmin, cmax)
    return total, squares, cmin, cmax


def split_batch(x: torch.Tensor, table: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The values whose raw top bits have class 1 in ``table`` (sure outliers), and the keys of
    those with class 2 (kept buckets), in the order they come."""
    flat = x.detach().to(torch.float32).contiguous().reshape(-1).numpy()
    sure, kept = _pass2(flat, flat.view(np.uint32), table)
    return torch.from_numpy(sure), torch.from_numpy(kept)
