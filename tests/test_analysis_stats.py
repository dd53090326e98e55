"""Streaming activation statistics against exact NumPy over the concatenated values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitquant.analysis import stats
from vitquant.analysis.hooks import observation_points, observe
from vitquant.analysis.keys import key_to_float, sortable_keys
from vitquant.analysis.stats import PointAccumulator, collect_activation_stats, stream_stats
from vitquant.errors import VitquantError


def numpy_reference(a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    iqr = q3 - q1
    out = (a < q1 - 1.5 * iqr) | (a > q3 + 1.5 * iqr)
    return {
        "q1": q1,
        "median": med,
        "q3": q3,
        "outlier_pct": 100 * out.mean(),
        "mean": a.mean(),
        "std": a.std(),
        "min": a.min(),
        "max": a.max(),
        "inside": a[~out],
        "out": a[out],
    }


def _cases():
    rng = np.random.default_rng(7)
    heavy = [rng.standard_t(2, size=(int(rng.integers(1, 40)), 6, 5)) for _ in range(4)]
    yield "heavy-tailed", [b.astype(np.float32) for b in heavy]
    yield "relu ties", [np.maximum(b, 0).astype(np.float32) for b in heavy]
    yield "integers", [np.round(3 * b).astype(np.float32) for b in heavy]
    yield "tiny negative", [(-np.abs(b) * 1e-30).astype(np.float32) for b in heavy]
    yield "constant", [np.full((3, 4, 2), 2.5, np.float32)] * 3
    shape = (20, 5, 2)
    signed_zeros = [np.where(rng.random(shape) < 0.9, 0.0, rng.normal(size=shape)) for _ in "abc"]
    signed_zeros = [np.where(rng.random(z.shape) < 0.5, -z, z) for z in signed_zeros]  # -0.0 too
    yield "signed zeros (fences at 0)", [z.astype(np.float32) for z in signed_zeros]
    yield (
        "softmax-like",
        [torch.softmax(torch.from_numpy(4 * b), -1).numpy().astype(np.float32) for b in heavy],
    )


@pytest.mark.parametrize("third_pass", [False, True], ids=["two passes", "three passes"])
@pytest.mark.parametrize("name,batches", list(_cases()), ids=[c[0] for c in _cases()])
def test_stream_stats_equal_numpy(name, batches, third_pass, monkeypatch):
    """Both ways to the outliers (the fence windows of pass 2, or a third pass) are exact."""
    if third_pass:  # no window is narrow enough: every point takes the third pass
        monkeypatch.setattr(stats, "MAX_WINDOW_BUCKETS", -1)
    s = stream_stats([torch.from_numpy(b) for b in batches], channel_dim=1, sample_size=50)
    ref = numpy_reference(np.concatenate([b.reshape(-1) for b in batches]))
    # Quartiles are exact order statistics interpolated like np.percentile.
    for key in ("q1", "median", "q3", "min", "max"):
        assert getattr(s, key) == pytest.approx(ref[key], rel=1e-12, abs=1e-300), key
    assert s.outlier_pct == pytest.approx(ref["outlier_pct"], abs=1e-9)
    assert s.mean == pytest.approx(ref["mean"], rel=1e-5, abs=1e-6 * ref["std"] + 1e-300)
    assert s.std == pytest.approx(ref["std"], rel=1e-5, abs=1e-300)
    assert s.count == sum(b.size for b in batches)
    if len(ref["inside"]):
        assert s.whisker_low == ref["inside"].min() and s.whisker_high == ref["inside"].max()
    chan = np.abs(np.concatenate(batches, 0)).max(axis=(0, 2))
    np.testing.assert_array_equal(s.channel_absmax, chan)
    assert s.channel_absmax_ratio == pytest.approx(chan.max() / np.median(chan))
    # Samples are bounded, drawn from the data, and the outlier sample holds only outliers.
    assert len(s.sample) == min(50, s.count)
    assert np.isin(s.sample, np.concatenate([b.reshape(-1) for b in batches])).all()
    assert len(s.outlier_sample) == min(50, len(ref["out"]))
    assert np.isin(s.outlier_sample.astype(np.float64), ref["out"]).all()


def test_sortable_keys_preserve_float_order():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(1000) * 10.0 ** rng.integers(-40, 30, 1000),
            [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38],
        ]
    ).astype(np.float32)
    keys = sortable_keys(torch.from_numpy(x)).numpy().astype(np.int64)
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(x[order].astype(np.float64)) >= 0)
    for v, k in zip(x[:50], keys[:50], strict=True):
        assert key_to_float((int(k) >> 16) + (1 << 15), int(k) & 0xFFFF) == v


def test_memory_does_not_grow_with_batches():
    """The accumulator's state after 30 batches is as large as after 3."""

    def state_bytes(n_batches: int) -> int:
        acc = PointAccumulator(channel_dim=-1, sample_size=5)
        data = [torch.randn(8, 17, 32) for _ in range(n_batches)]
        for x in data:
            acc.update1(x)
        acc.begin2()
        for x in data:
            acc.update2(x)
        acc.end2()
        assert not acc.needs_pass3  # Gaussian data: narrow fence windows
        tensors = [v for v in vars(acc).values() if isinstance(v, torch.Tensor | np.ndarray)]
        tensors += [acc.sample.values, acc.outliers.values]
        return sum(t.nbytes for t in tensors)

    assert abs(state_bytes(30) - state_bytes(3)) <= 64  # a few interval edges may differ


@pytest.fixture(scope="module")
def digits_vit(digits_models):
    from vitquant.data import load_data
    from vitquant.registry import load_model

    loaded = load_model("digits_vit")
    return loaded, load_data("digits", calib=96)


def test_model_outlier_pct_matches_numpy_on_raw_outputs(digits_vit):
    """Every point's statistics over 3 batches of real outputs equal NumPy's over all of them."""
    loaded, bundle = digits_vit
    model, spec = loaded.model, loaded.spec
    stats = collect_activation_stats(model, bundle, spec, batch_size=32, progress=False)

    raw: dict[str, list[np.ndarray]] = {}
    example, _ = next(bundle.batches("calib", spec, batch_size=2))
    points = observation_points(model, example, family=spec.family)
    n_batches = 0
    with (
        torch.no_grad(),
        observe(model, points, lambda p, o: raw.setdefault(p.point, []).append(o.numpy().copy())),
    ):
        for x, _ in bundle.batches("calib", spec, batch_size=32):
            model(x)
            n_batches += 1
    assert n_batches >= 3
    assert [s.point for s in stats] == [p.point for p in points]
    above = 0
    for s in stats:
        ref = numpy_reference(np.concatenate([a.reshape(-1) for a in raw[s.point]]))
        assert abs(s.outlier_pct - ref["outlier_pct"]) < 0.1, s.point
        assert s.q1 == pytest.approx(ref["q1"], rel=1e-9, abs=1e-12)
        assert s.q3 == pytest.approx(ref["q3"], rel=1e-9, abs=1e-12)
        assert (s.min, s.max) == (ref["min"], ref["max"])
        assert s.significant == (ref["outlier_pct"] > 5.0)
        above += ref["outlier_pct"] > 5.0
    assert above >= 1  # the case exercises significant points


def test_to_dict_names_the_module(digits_vit):
    loaded, bundle = digits_vit
    stats = collect_activation_stats(
        loaded.model, bundle, loaded.spec, limit=16, sample_size=10, progress=False
    )
    d = {s["point"]: s for s in (s.to_dict() for s in stats)}
    assert d["blocks.0.norm1"]["name"] == "blocks.0.attn.qkv"
    assert d["blocks.1.attn.softmax"]["module"] == "blocks.1.attn.proj"
    assert "sample" not in d["head"]
    assert len(stats[0].to_dict(samples=True)["sample"]) == 10


@pytest.mark.parametrize("scale", [1.01, 0.99], ids=["values grow", "values shrink"])
def test_a_model_that_changes_between_passes_is_refused(scale):
    """Pass 2 meets other values than pass 1 counted (dropout left on, say): a clear error."""
    a = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    calls = []

    def source():
        calls.append(1)
        return [torch.from_numpy(a if len(calls) == 1 else a * scale)]

    with pytest.raises(VitquantError, match="deterministic model"):
        stream_stats(source)
