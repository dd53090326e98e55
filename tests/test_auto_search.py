"""The cheaper accuracy-aware search: bisection on the number of float layers, the one-pass
layer-SQNR ranking (against a NumPy re-computation) and the inductor-lowered evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitquant.analysis.layer_sqnr import layer_sqnr
from vitquant.data import load_data
from vitquant.quant.auto import _bisect, select_ignore
from vitquant.quant.lowered import LoweredModel
from vitquant.quant.pt2e import quantize_static
from vitquant.registry import load_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.mark.parametrize("threshold", [1, 2, 7, 13, 20, 21])
def test_bisect_finds_the_smallest_good_k_in_log_steps(threshold):
    n, tried, step_of = 20, [], {}

    def good(k):
        tried.append(k)
        step_of[k] = len(tried)
        return k >= threshold

    step = _bisect(good, n, lambda: len(tried))
    if threshold > n:  # unreachable: the whole ranking, tried once
        assert tried == [n] and step == 1
        return
    assert step == step_of[threshold]
    assert len(tried) <= 1 + math.ceil(math.log2(n)) + 1


def test_select_ignore_bisect_returns_its_smallest_passing_step(digits, digits_models):
    vit = load_model("digits_vit")
    ranking = ["blocks.2.mlp.fc2", "head", "blocks.1.mlp.fc2", "blocks.0.attn.qkv"]
    result = select_ignore(vit.model, digits, vit.spec, max_drop=0.0, ranking=ranking,
                           search="bisect")  # fmt: skip
    assert len(result.steps) <= 1 + 1 + math.ceil(math.log2(len(ranking)))
    for s in result.steps:
        k = len(s["ignored"])
        assert s["ignored"] == ranking[:k]
    passing = [s for s in result.steps if s["drop_pts"] <= 0.0]
    if result.met:
        best = min(passing, key=lambda s: len(s["ignored"]))
        assert result.ignored == best["ignored"]
        assert result.model.ignored == result.ignored
    else:  # even the whole ranking misses: that step is returned
        assert result.ignored == ranking


def test_layer_sqnr_matches_numpy(digits, digits_models):
    """The head's W8A8 output SQNR, recomputed with NumPy from the observed ranges."""
    cnn = load_model("digits_cnn")
    model = cnn.model.eval()
    rows = {r.name: r for r in layer_sqnr(model, digits, cnn.spec, limit=64, calib_limit=128)}
    assert [r.sqnr_db for r in rows.values()] == sorted(r.sqnr_db for r in rows.values())
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    layer = dict(model.named_modules())[name]
    captured = []
    h = layer.register_forward_pre_hook(lambda m, a: captured.append(a[0].numpy().copy()))
    with torch.no_grad():
        for x, _ in digits.batches("calib", cnn.spec, limit=128):
            model(x)
        n_calib = len(captured)
        for x, _ in digits.batches("val", cnn.spec, limit=64):
            model(x)
    h.remove()
    calib_x = np.concatenate(captured[:n_calib]).astype(np.float64)
    val_x = np.concatenate(captured[n_calib:]).astype(np.float64)
    lo, hi = min(calib_x.min(), 0.0), max(calib_x.max(), 0.0)  # MinMaxObserver keeps 0
    scale = np.float32((hi - lo) / 255)
    zp = np.clip(np.round(-lo / scale), 0, 255)
    xq = (np.clip(np.round(val_x / scale) + zp, 0, 255) - zp) * scale
    w = layer.weight.detach().numpy().astype(np.float64)
    w_scale = np.abs(w).max(1, keepdims=True) / 127.5  # per-channel symmetric, -128..127
    wq = np.clip(np.round(w / w_scale), -128, 127) * w_scale
    b = layer.bias.detach().numpy()
    y, yq = val_x @ w.T + b, xq @ wq.T + b
    expected = 10 * np.log10((y**2).sum() / ((y - yq) ** 2).sum())
    assert rows[name].n_images == 64
    assert rows[name].sqnr_db == pytest.approx(expected, abs=0.05)


def test_lowered_model_pads_chunks_without_changing_rows(digits, digits_models):
    cnn = load_model("digits_cnn")
    qm = quantize_static(cnn.model, digits, cnn.spec)
    x, _ = next(digits.batches("test", cnn.spec, batch_size=64))
    lowered = LoweredModel(qm, chunk=32)
    full = lowered(x)  # two exact chunks
    padded = lowered(x[:45])  # one exact chunk + 13 rows padded to 32
    assert padded.shape == (45, 10)
    torch.testing.assert_close(padded, full[:45], atol=0, rtol=0)
    with torch.no_grad():
        eager = qm.module(x)
    assert (full.argmax(1) == eager.argmax(1)).float().mean().item() >= 0.95
