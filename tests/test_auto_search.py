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
    result = select_ignore(
        vit.model, digits, vit.spec, max_drop=0.0, ranking=ranking, search="bisect"
    )
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


@pytest.mark.parametrize("backend", ["x86", "xnnpack"])
def test_cached_calibration_gives_the_same_model_without_the_images(digits, digits_models, backend):
    """Observers record float tensors, so the full graph's calibration serves any ignore list:
    the converted model is identical, and only the export example is read from calib."""
    from vitquant.quant.configs import StaticPTQ

    vit = load_model("digits_vit")
    cfg = StaticPTQ(backend=backend, calib=96, calib_batch=32)
    full = quantize_static(vit.model, digits, vit.spec, cfg)
    ignore = ["head", "blocks.1.mlp.fc1"]
    direct = quantize_static(vit.model, digits, vit.spec, cfg, ignore=ignore)

    class Counting:
        def __init__(self, bundle):
            self.bundle, self.batches_read = bundle, 0

        def batches(self, *args, **kw):
            for batch in self.bundle.batches(*args, **kw):
                self.batches_read += 1
                yield batch

    counting = Counting(digits)
    cached = quantize_static(
        vit.model, counting, vit.spec, cfg, ignore=ignore, calibration=full.calibration
    )
    assert counting.batches_read == 1  # the export example only; 3 batches without the cache
    assert cached.ignored == direct.ignored == sorted(ignore)
    x, _ = next(digits.batches("test", vit.spec, batch_size=128))
    with torch.no_grad():
        torch.testing.assert_close(cached.module(x), direct.module(x), atol=0, rtol=0)
