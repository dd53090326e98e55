"""Per-point low-bit errors: SQNR against an exact NumPy computation, impact against a float
model with one output quantized by hand, rank correlations against hand-ranked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitquant.analysis.hooks import observation_points, observe
from vitquant.analysis.point_error import (
    PointError,
    PointSetting,
    point_errors,
    quantized_points,
    rank_correlations,
)
from vitquant.models.vit import digits_vit


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = digits_vit().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]
    val = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))]
    return model, calib, val


def _numpy_fake_quant(x: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Asymmetric per-tensor fake quantization written out in float64."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2**bits - 1
    scale = np.float32((hi - lo) / qmax)
    zp = int(np.clip(np.round(-lo / scale), 0, qmax))
    q = np.clip(np.round(x.astype(np.float64) / scale) + zp, 0, qmax)
    return (q - zp) * scale


def test_sqnr_matches_numpy(vit):
    model, calib, val = vit
    points = observation_points(model, calib[0][:2])
    setting = PointSetting(abits=lambda _name: 4, quantize_attention=True)
    errors = point_errors(model, points, setting, calib=lambda: calib, val=lambda: val, impact=None)
    chosen = quantized_points(points, setting)
    assert [e.point for e in errors] == [p.point for p in chosen]
    assert {e.kind for e in errors} >= {"norm", "act", "softmax", "qkv"}
    # the reference: capture every chosen point's float activations independently
    seen: dict[str, list[np.ndarray]] = {p.point: [] for p in chosen}
    with torch.no_grad(), observe(model, chosen, lambda p, o: seen[p.point].append(o.numpy())):
        for x in calib:
            model(x)
    ranges = {k: (min(a.min() for a in v), max(a.max() for a in v)) for k, v in seen.items()}
    vals: dict[str, list[np.ndarray]] = {p.point: [] for p in chosen}
    with torch.no_grad(), observe(model, chosen, lambda p, o: vals[p.point].append(o.numpy())):
        for x, _ in val:
            model(x)
    for e in errors:
        x = np.concatenate([a.ravel() for a in vals[e.point]]).astype(np.float64)
        xq = _numpy_fake_quant(x, *map(float, ranges[e.point]), 4)
        expected = 10 * math.log10((x**2).sum() / ((x - xq) ** 2).sum())
        assert e.sqnr_db == pytest.approx(expected, abs=0.05), e.point
        assert e.quantizer == "uniform-4"
    # 8 bits is ~24 dB better than 4 bits (6 dB per bit) on a normed point
    eight = point_errors(
        model, points, PointSetting(abits=lambda _n: 8), calib=lambda: calib, val=lambda: val
    )
    norm4 = next(e for e in errors if e.kind == "norm")
    norm8 = next(e for e in eight if e.point == norm4.point)
    assert 18 < norm8.sqnr_db - norm4.sqnr_db < 30


def test_log2_softmax_point_matches_numpy(vit):
    model, calib, val = vit
    points = observation_points(model, calib[0][:2])
    setting = PointSetting(lambda _n: 4, True, softmax="log2-sqrt2")
    errors = point_errors(model, points, setting, calib=lambda: calib, val=lambda: val)
    soft = [e for e in errors if e.kind == "softmax"]
    assert len(soft) == 3 and all(e.quantizer == "log2-sqrt2-4" for e in soft)
    chosen = [p for p in points if p.kind == "softmax"]
    vals: dict[str, list[np.ndarray]] = {p.point: [] for p in chosen}
    with torch.no_grad(), observe(model, chosen, lambda p, o: vals[p.point].append(o.numpy())):
        for x, _ in val:
            model(x)
    for e in soft:
        x = np.concatenate([a.ravel() for a in vals[e.point]]).astype(np.float64)
        # log-sqrt2 by hand: code round(-2 log2 x) in 0..14, code 15 (and x = 0) means 0
        code = np.clip(np.round(-2 * np.log2(np.maximum(x, 1e-30))), 0, 15)
        xq = np.where((code < 15) & (x > 0), 2.0 ** (-code / 2), 0.0)
        expected = 10 * math.log10((x**2).sum() / ((x - xq) ** 2).sum())
        assert e.sqnr_db == pytest.approx(expected, abs=0.05), e.point


def test_impact_equals_hand_quantized_accuracy(vit):
    model, calib, val = vit
    points = observation_points(model, calib[0][:2])
    setting = PointSetting(abits=lambda _n: 2)
    errors = point_errors(
        model, points, setting, calib=lambda: calib, val=lambda: val, impact=lambda: val
    )
    target = next(e for e in errors if e.kind == "act")
    point = next(p for p in points if p.point == target.point)
    # reference: quantize that point's output with NumPy inside a hook, compare accuracies
    seen = []
    with torch.no_grad(), observe(model, [point], lambda p, o: seen.append(o.numpy())):
        for x in calib:
            model(x)
    lo, hi = float(min(a.min() for a in seen)), float(max(a.max() for a in seen))
    x, y = val[0]
    with torch.no_grad(), observe(model, [], lambda *_: None):
        base = (model(x).argmax(-1) == y).float().mean().item()
        h = point.target.register_forward_hook(
            lambda _m, _i, o: torch.from_numpy(_numpy_fake_quant(o.numpy(), lo, hi, 2)).float()
        )
        try:
            quant = (model(x).argmax(-1) == y).float().mean().item()
        finally:
            h.remove()
    assert target.impact_pts == pytest.approx((base - quant) * 100, abs=1e-6)


def _err(point: str, outliers: float, sqnr: float, impact: float | None) -> PointError:
    return PointError(point, point, "norm", "uniform-4", 4, sqnr, impact, outliers, 1.0)


def test_rank_correlations_hand_cases():
    # more outliers, lower SQNR, more impact: both rho = +1
    rows = [_err(f"p{i}", o, s, m) for i, (o, s, m) in enumerate(
        [(1.0, 40.0, 0.1), (2.0, 30.0, 0.5), (3.0, 20.0, 0.9), (9.0, 10.0, 3.0)]
    )]  # fmt: skip
    corr = rank_correlations(rows)
    assert corr["outlier_pct_vs_error"]["rho"] == pytest.approx(1.0)
    assert corr["outlier_pct_vs_impact"]["rho"] == pytest.approx(1.0)
    # reversed impacts: rho = -1; ranks of [1,2,3,4] vs [4,3,1,2]: 1 - 6*sum d^2/(n(n^2-1))
    rows = [_err(f"p{i}", o, s, m) for i, (o, s, m) in enumerate(
        [(1.0, 40.0, 4.0), (2.0, 30.0, 3.0), (3.0, 20.0, 1.0), (4.0, 10.0, 2.0)]
    )]  # fmt: skip
    rho = rank_correlations(rows)["outlier_pct_vs_impact"]["rho"]
    d2 = (1 - 4) ** 2 + (2 - 3) ** 2 + (3 - 1) ** 2 + (4 - 2) ** 2
    assert rho == pytest.approx(1 - 6 * d2 / (4 * 15))
    # fewer than 3 points: no correlation
    assert rank_correlations(rows[:2])["outlier_pct_vs_error"]["rho"] is None
