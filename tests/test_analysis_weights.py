"""Weight statistics, the study's change score and SQNR against NumPy / torch references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitquant.analysis.weights import (
    change_score,
    change_score_parts,
    fake_quant_per_channel_symmetric,
    fake_quant_per_tensor_symmetric,
    ranked_by_change,
    rel_mse,
    sqnr_db,
    weight_histograms,
    weight_stats,
)
from vitquant.registry import load_model


def study_change_score(orig: np.ndarray) -> float:
    """The study's formula, written out independently."""
    scale = np.max(np.abs(orig)) / 127
    q = np.clip(np.round(orig / scale), -127, 127) * scale
    mean_change = np.abs(np.mean(q) - np.mean(orig))
    std_change = np.abs(np.std(q) - np.std(orig))
    return mean_change / np.mean(orig) + std_change / np.std(orig)


def test_fake_quant_by_hand_rounds_half_to_even():
    w = np.array([127.0, 2.5, 3.5, -0.5, -126.6, 0.49], dtype=np.float32)  # scale = 1
    np.testing.assert_array_equal(
        fake_quant_per_tensor_symmetric(w), np.array([127, 2, 4, -0.0, -127, 0], np.float32)
    )


def test_fake_quant_matches_torch():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    scale = float(np.max(np.abs(w)) / 127)
    ref = torch.fake_quantize_per_tensor_affine(torch.from_numpy(w), scale, 0, -127, 127).numpy()
    np.testing.assert_allclose(fake_quant_per_tensor_symmetric(w), ref, rtol=0, atol=1e-6)
    scales = torch.from_numpy(np.abs(w).max(axis=1) / 127).float()
    ref_c = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(w), scales, torch.zeros(64, dtype=torch.int32), 0, -127, 127
    ).numpy()
    np.testing.assert_allclose(fake_quant_per_channel_symmetric(w), ref_c, rtol=0, atol=1e-6)


def test_change_score_by_hand():
    # scale = 2/127; -2 and 2 are exact, 1 -> round(63.5) = 64 (half to even) -> 128/127.
    w = np.array([-2.0, 1.0, 2.0, 2.0], dtype=np.float64)
    q = np.array([-2.0, 128 / 127, 2.0, 2.0])
    expected = abs(q.mean() - w.mean()) / w.mean() + abs(q.std() - w.std()) / w.std()
    assert change_score(w) == pytest.approx(expected, rel=1e-12)
    score, mean_change, std_change = change_score_parts(w)
    assert mean_change == pytest.approx(abs(q.mean() - w.mean()))
    assert std_change == pytest.approx(abs(q.std() - w.std()))


def test_change_score_keeps_signed_denominators():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(1000) - 0.05).astype(np.float32)
    assert np.mean(w) < 0
    assert change_score(w) == pytest.approx(study_change_score(w), rel=1e-6)
    assert change_score(w) < 0  # a negative mean gives a negative score, as in the study
    assert change_score(-w) > 0


def test_sqnr_and_rel_mse_by_hand():
    orig, q = np.array([1.0, 1.0]), np.array([1.1, 0.9])
    assert sqnr_db(orig, q) == pytest.approx(20.0)
    assert rel_mse(orig, q) == pytest.approx(0.01)
    assert sqnr_db(orig, orig) == float("inf")


@pytest.fixture(scope="module")
def vit(digits_models):
    return load_model("digits_vit").model


def test_weight_stats_against_numpy(vit):
    rows = weight_stats(vit)
    params = dict(vit.named_parameters())
    assert [r.name for r in rows][:3] == [
        "patch_embed.proj",
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
    ]
    for r in rows:
        w = params[r.param].detach().numpy()
        a = w.astype(np.float64).reshape(-1)
        q1, q3 = np.percentile(a, [25, 75])
        iqr = q3 - q1
        out = 100 * np.mean((a < q1 - 1.5 * iqr) | (a > q3 + 1.5 * iqr))
        assert (r.q1, r.q3) == pytest.approx((q1, q3))
        assert r.outlier_pct == pytest.approx(out)
        assert r.change_score == pytest.approx(study_change_score(w), rel=1e-6)
        q_t = np.clip(np.round(w / (np.abs(w).max() / 127)), -127, 127) * (np.abs(w).max() / 127)
        err = np.sum((a - q_t.astype(np.float64).reshape(-1)) ** 2)
        assert r.sqnr_db == pytest.approx(10 * np.log10(np.sum(a**2) / err), rel=1e-6)
        assert r.rel_mse == pytest.approx(err / np.sum(a**2), rel=1e-6)
        # Per-channel scales never lose to one scale for the whole tensor.
        assert r.sqnr_db_per_channel >= r.sqnr_db - 1e-9
        ch = np.abs(w.reshape(w.shape[0], -1)).max(1)
        assert r.channel_absmax_ratio == pytest.approx(ch.max() / np.median(ch))
    ranked = ranked_by_change(rows)
    scores = [r.change_score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [r.change_rank for r in ranked] == list(range(1, len(rows) + 1))


def test_weight_histograms_count_every_weight(vit):
    hists = weight_histograms(vit, bins=20)
    params = dict(vit.named_parameters())
    for h in hists:
        assert h.counts.sum() == params[f"{h.name}.weight"].numel()
        assert len(h.edges) == 21
