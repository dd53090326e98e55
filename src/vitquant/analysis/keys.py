"""Order-preserving integer keys of float32 values, and their 65,536 coarse buckets.

The exact streaming quartiles (``vitquant.analysis.stats``) are a two-round radix select over
these keys: a histogram of the top 16 bits, then histograms of the low 16 bits of the few
buckets that matter. Hand-written because no library offers a radix select over a stream that
does not fit in memory; the helpers are pure functions, tested against NumPy's float order.
"""

from __future__ import annotations

import numpy as np
import torch

BUCKETS = 1 << 16


def sortable_keys(x: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 keys of float32 values: ``a < b`` iff ``key(a) < key(b)``.

    Negative floats get their 31 magnitude bits flipped, so the signed integer order of the keys
    is the float order (-0.0 sorts just below +0.0). ``key >> 16`` is the coarse bucket.
    """
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def bucket_of(keys: torch.Tensor) -> torch.Tensor:
    """Top 16 bits of the keys as an index in ``[0, 65536)``."""
    return (keys >> 16) + (BUCKETS // 2)


def _raw_of_bucket() -> torch.Tensor:
    """For each key bucket (``bucket_of``), the matching top-16-bit pattern of the raw float bits.

    ``key >> 16 == t ^ ((t >> 15) & 0x7FFF)`` for the raw top bits ``t`` (an involution), so a
    histogram of raw top bits is permuted into key order without computing keys per value.
    """
    t = torch.arange(BUCKETS, dtype=torch.int32) - BUCKETS // 2
    return (t ^ ((t >> 15) & 0x7FFF)) & 0xFFFF


RAW_OF_BUCKET = _raw_of_bucket().long()


def key_to_float(bucket: int, low: int) -> float:
    """The float32 whose key has top 16 bits ``bucket`` (as from ``bucket_of``) and ``low``."""
    return float(keys_to_floats(np.array([((bucket - BUCKETS // 2) << 16) | low]))[0])


def float_key(v: float) -> int:
    """The key (``sortable_keys``) of the float32 ``v`` as a Python int."""
    return int(sortable_keys(torch.tensor([v], dtype=torch.float32))[0])


def bucket_of_float(v: float) -> int:
    """The coarse bucket holding the float32 ``v`` (finite or infinite)."""
    return (float_key(v) >> 16) + BUCKETS // 2


def float32_at_least(v: float) -> float:
    """The smallest float32 that is >= ``v``."""
    f = np.float32(v)
    if float(f) < v:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def float32_at_most(v: float) -> float:
    """The largest float32 that is <= ``v``."""
    return -float32_at_least(-v)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """The smallest and largest non-NaN float32 whose key falls in ``bucket``.

    The buckets at the ends of the key range also hold NaN bit patterns; their bounds are
    clipped to -inf / +inf.
    """
    lo, hi = key_to_float(bucket, 0), key_to_float(bucket, 0xFFFF)
    return (-np.inf if np.isnan(lo) else lo), (np.inf if np.isnan(hi) else hi)


def keys_to_floats(keys: np.ndarray) -> np.ndarray:
    """The float32 values of int keys (``sortable_keys``), vectorised ``key_to_float``."""
    k = np.asarray(keys, dtype=np.int64)
    k = np.where(k < 0, k ^ 0x7FFFFFFF, k)
    return k.astype(np.int32).view(np.float32)
