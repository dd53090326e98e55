"""Per-batch kernels of the activation statistics (Numba): tight loops, without the GIL.

The statistics of ``vitquant.analysis.stats`` need, per batch and point, a histogram of the top
16 bits, the sum and shifted sum of squares, and per-channel minima and maxima (pass 1), then
the few values whose coarse bucket matters (pass 2). As separate tensor operations that is six
passes over memory in pass 1 and four in pass 2, which cost ~5x the model's own forward on
``cifar_vit`` (``benchmarks/analysis_cost.py``). These kernels read each value once per
statistic in tight loops, without the GIL.

Hand-written because no library computes a radix histogram, float64 moments and per-channel
extremes of a float32 tensor without temporaries the size of the tensor; Numba (a well-kept JIT
for exactly this kind of loop) compiles them once per machine (``cache=True``).
They are compiled single-threaded (Numba's parallel threading layers do not mix safely with
PyTorch's OpenMP pool and forked DataLoader workers in one process) without the GIL, and a
batch is split across ``torch.get_num_threads()`` plain Python threads instead. The split into
parts depends only on the batch's size, never on the thread count, and the parts' float64 sums
are added in part order: the statistics are the same bits with 1 thread or 16. Each kernel is
tested against the PyTorch/NumPy computation it replaces (``tests/test_analysis_kernels.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

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
    outer, channels, inner = values.shape
    if inner == 1:  # channels last: vectorised across channels
        for o in range(outer):
            for c in range(channels):
                v = values[o, c, 0]
                if v < cmin[c]:
                    cmin[c] = v
                if v > cmax[c]:
                    cmax[c] = v
        return
    for o in range(outer):
        for c in range(channels):
            lo = cmin[c]
            hi = cmax[c]
            for i in range(inner):
                v = values[o, c, i]
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
            cmin[c] = lo
            cmax[c] = hi


def _pass1(values, bits, shift, hist, cmin, cmax):
    """Histogram, sums and extremes of one part: three tight loops (each vectorises, or keeps
    its stores in L1) are 2x faster here than one loop doing all three."""
    _histogram(bits.reshape(-1), hist)
    _extremes(values, cmin, cmax)
    return _sums(values.reshape(-1), shift)


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


_POOL: ThreadPoolExecutor | None = None
_MIN_PER_PART = 1 << 16  # values; smaller batches are not worth a thread hand-off
_MAX_PARTS = 8


def _parts(n_values: int) -> int:
    """How many parts a batch of ``n_values`` values is cut into (not the thread count: the
    sums must not depend on it)."""
    return max(1, min(_MAX_PARTS, n_values // _MIN_PER_PART))


def _map(fn, chunks: list, *, state=None) -> tuple[list, list]:
    """``fn(chunk, own)`` over ``chunks`` on ``torch.get_num_threads()`` threads (this one
    included): thread ``k`` runs chunks ``k, k + threads, ...`` in order with its own
    ``own = state(k)``. Returns the results in chunk order and each thread's ``own``."""
    global _POOL
    workers = max(1, min(len(chunks), torch.get_num_threads()))
    state = state or (lambda k: None)

    def group(k: int):
        own = state(k)
        return own, [fn(c, own) for c in chunks[k::workers]]

    if workers == 1:
        own, results = group(0)
        return results, [own]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vitquant-stats")
    futures = [_POOL.submit(group, k) for k in range(1, workers)]
    groups = [group(0), *(f.result() for f in futures)]
    results: list = [None] * len(chunks)
    for k, (_, part) in enumerate(groups):
        results[k::workers] = part
    return results, [own for own, _ in groups]


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [n * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def batch_summary(
    x: torch.Tensor, cdim: int, shift: float, hist: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """A batch's pass-1 summary: adds the top-16-bit counts to ``hist`` (raw bit order) and returns
    ``(sum, sum((x - shift)^2), per-channel min, per-channel max)`` (sums in float64)."""
    values = _as_3d(x, cdim)
    channels = values.shape[1]
    cuts = _cuts(values.shape[0], min(_parts(values.size), values.shape[0]))

    def run(cut: tuple[int, int], own: np.ndarray):
        part = values[cut[0] : cut[1]]
        cmin = np.full(channels, np.inf, np.float32)
        cmax = np.full(channels, -np.inf, np.float32)
        total, squares = _pass1(part, part.view(np.uint32), float(shift), own, cmin, cmax)
        return total, squares, cmin, cmax

    parts, hists = _map(run, cuts, state=lambda k: hist if k == 0 else np.zeros_like(hist))
    for own in hists[1:]:
        hist += own
    total = sum(p[0] for p in parts)  # in part order: the same bits whatever the threads
    squares = sum(p[1] for p in parts)
    cmin = np.minimum.reduce([p[2] for p in parts])
    cmax = np.maximum.reduce([p[3] for p in parts])
    return total, squares, cmin, cmax


def split_batch(x: torch.Tensor, table: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The values whose raw top bits have class 1 in ``table`` (sure outliers), and the keys of
    those with class 2 (kept buckets), in the order they come."""
    flat = x.detach().to(torch.float32).contiguous().reshape(-1).numpy()
    bits = flat.view(np.uint32)
    cuts = _cuts(len(flat), _parts(len(flat)))
    if not cuts:  # an empty output (a zero-size tensor at this point)
        return torch.empty(0, dtype=torch.float32), torch.empty(0, dtype=torch.int32)
    parts, _ = _map(lambda c, _: _pass2(flat[c[0] : c[1]], bits[c[0] : c[1]], table), cuts)
    if len(parts) == 1:
        sure, kept = parts[0]
    else:
        sure, kept = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return torch.from_numpy(sure), torch.from_numpy(kept)
