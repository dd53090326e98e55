"""The fused Numba kernels of the activation statistics against NumPy/PyTorch computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitquant.analysis.kernels import batch_summary, split_batch
from vitquant.analysis.keys import BUCKETS, sortable_keys


def _data(shape, loc=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = loc + scale * rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3, shape)
    return torch.from_numpy(x.astype(np.float32))


@pytest.mark.parametrize(
    "shape,cdim",
    [((4, 9, 16), 2), ((3, 5, 7, 7), 1), ((6, 11), 1), ((13,), 0), ((2, 3, 4), 0)],
    ids=["tokens-last", "heads/NCHW", "2d", "1d", "first"],
)
def test_batch_summary_equals_numpy(shape, cdim):
    x = _data(shape, seed=len(shape) + cdim)
    shift = 0.37
    hist = np.zeros(BUCKETS, np.int64)
    hist[5] = 3  # the kernel adds to what is there
    total, squares, lo, hi = batch_summary(x, cdim, shift, hist)
    a = x.numpy()
    bits = a.reshape(-1).view(np.uint32) >> 16
    expected = np.bincount(bits, minlength=BUCKETS)
    expected[5] += 3
    np.testing.assert_array_equal(hist, expected)
    a64 = a.astype(np.float64)
    assert total == pytest.approx(a64.sum(), rel=1e-12, abs=1e-9)
    assert squares == pytest.approx(((a64 - shift) ** 2).sum(), rel=1e-12)
    axes = tuple(d for d in range(a.ndim) if d != cdim)
    np.testing.assert_array_equal(lo, a.min(axis=axes))
    np.testing.assert_array_equal(hi, a.max(axis=axes))


def test_batch_summary_of_a_non_contiguous_tensor():
    x = _data((5, 8, 6)).transpose(0, 2)  # a view: the kernel reads it as laid out logically
    hist = np.zeros(BUCKETS, np.int64)
    _, _, lo, hi = batch_summary(x, 2, 0.0, hist)
    np.testing.assert_array_equal(lo, x.numpy().min(axis=(0, 1)))
    np.testing.assert_array_equal(hi, x.numpy().max(axis=(0, 1)))


def test_split_batch_equals_table_lookup():
    x = torch.cat([_data((400,)), torch.tensor([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45])])
    rng = np.random.default_rng(1)
    table = rng.choice(np.array([0, 1, 2], np.uint8), BUCKETS, p=[0.6, 0.2, 0.2])
    table[[0x0000, 0x8000, 0x7F80, 0xFF80]] = 2  # +0, -0, +inf, -inf kept
    sure, keys = split_batch(x, table)
    raw = x.numpy().view(np.uint32) >> 16
    cls = table[raw]
    np.testing.assert_array_equal(sure.numpy(), x.numpy()[cls == 1])
    np.testing.assert_array_equal(keys.numpy(), sortable_keys(x[torch.from_numpy(cls == 2)]))
    assert keys.dtype == torch.int32


def test_any_thread_count_gives_the_same_bits(monkeypatch):
    """The batch is cut into parts by size alone, so 1, 2 or 3 threads give the same histogram,
    extremes and order, and bit-identical float64 sums (added in part order)."""
    from vitquant.analysis import kernels

    x = _data((70, 31, 64), seed=5)  # 139k values: two parts
    assert kernels._parts(x.numel()) == 2
    table = np.random.default_rng(2).choice(np.array([0, 1, 2], np.uint8), BUCKETS)
    results = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        hist = np.zeros(BUCKETS, np.int64)
        summary = batch_summary(x, 2, 0.1, hist)
        results[threads] = (hist, summary, split_batch(x, table))
    h1, s1, (o1, k1) = results[1]
    for threads in (2, 3):
        h, s, (o, k) = results[threads]
        np.testing.assert_array_equal(h1, h)
        assert s1[0] == s[0] and s1[1] == s[1]  # exactly
        np.testing.assert_array_equal(s1[2], s[2])
        np.testing.assert_array_equal(s1[3], s[3])
        assert torch.equal(o1, o) and torch.equal(k1, k)


def test_split_of_an_empty_batch_is_empty():
    sure, keys = split_batch(torch.empty(0, 4), np.full(BUCKETS, 2, np.uint8))
    assert sure.shape == keys.shape == (0,)
