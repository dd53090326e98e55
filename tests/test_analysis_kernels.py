"""The fused Numba kernels of the activation statistics against NumPy/PyTorch computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitquant.analysis.kernels import SKIP, SURE, batch_summary, route_batch
from vitquant.analysis.keys import BUCKETS, RAW_OF_BUCKET, bucket_of, sortable_keys
from vitquant.analysis.merges import RankSample
from vitquant.analysis.radix import Refinement


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


def _routing(x: torch.Tensor, chosen: list[int], sure: list[int], size: int):
    """A refinement over ``chosen`` buckets (counts from ``x``), route_batch's table with the
    ``sure`` buckets and its busy mask, and a rank sample of ``size`` of the sure values."""
    counts = torch.bincount(bucket_of(sortable_keys(x)).long(), minlength=BUCKETS)
    refine = Refinement(torch.cumsum(counts, 0), set(chosen))
    table = np.full(BUCKETS, SKIP, np.int32)
    table[RAW_OF_BUCKET[sure].numpy()] = SURE
    table[RAW_OF_BUCKET[sorted(chosen)].numpy()] = np.arange(len(chosen), dtype=np.int32)
    sample = RankSample(int(counts[sure].sum()), size, np.random.default_rng(0))
    return refine, table, (table != SKIP).astype(np.uint8), sample


@pytest.mark.parametrize("chunk", [None, 997], ids=["whole batches", "997-value chunks"])
def test_route_batch_equals_numpy(chunk, monkeypatch):
    """Kept low bits (a buffer in stream order, a dense histogram) and the sampled sure values
    equal a NumPy selection, whatever the batches (and chunks) the stream is cut into."""
    if chunk is not None:
        monkeypatch.setattr("vitquant.analysis.kernels.CHUNK", chunk)
    crowd = 1.0 + 0.007 * torch.rand(70_000, generator=torch.Generator().manual_seed(0))
    special = torch.tensor([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45])
    x = torch.cat([_data((3000,)), crowd, special])[torch.randperm(73_006)]
    buckets = bucket_of(sortable_keys(x)).numpy()
    busy, n = np.unique(buckets, return_counts=True)
    chosen = [int(busy[np.argmax(n)]), *(int(b) for b in busy[n < 5][:6])]  # one dense bucket
    sure = [int(b) for b in busy[n < 5][6:]]
    refine, table, busy, sample = _routing(x, chosen, sure, size=25)
    for part in (x[:30_000], x[30_000:30_001], x[30_001:]):
        assert route_batch(part, table, busy, sample, refine) == -1
    low = (sortable_keys(x) & 0xFFFF).numpy()
    for b, slot in refine.slots.items():
        assert slot.fill == slot.count == int((buckets == b).sum())
        mine = low[buckets == b]
        if slot.dense:
            np.testing.assert_array_equal(slot.data.numpy(), np.bincount(mine, minlength=BUCKETS))
        else:
            np.testing.assert_array_equal(slot.data.numpy(), mine)  # in stream order
    assert any(s.dense for s in refine.slots.values())
    sure_values = x.numpy()[np.isin(buckets, sure)]
    assert sample.seen == sample.total == len(sure_values) > 25
    np.testing.assert_array_equal(sample.values(), sure_values[sample.picks])


def test_route_batch_reports_more_values_than_counted():
    """A value beyond a chosen bucket's pass-1 count (a nondeterministic model) is reported."""
    x = torch.tensor([1.0, 1.0, 2.0])
    refine, table, busy, sample = _routing(x, [int(bucket_of(sortable_keys(x[:1])))], [], size=4)
    assert route_batch(x, table, busy, sample, refine) == -1
    assert route_batch(x[:1], table, busy, sample, refine) == 0  # a third 1.0


def test_route_of_an_empty_batch_changes_nothing():
    refine, table, busy, sample = _routing(torch.tensor([1.0, 2.0]), [], [], size=4)
    assert route_batch(torch.empty(0, 4), table, busy, sample, refine) == -1
    assert sample.seen == 0 and len(sample.values()) == 0
