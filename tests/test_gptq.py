"""GPTQ (``vitquant.quant.vitmethods.gptq``) against independent references: NumPy round-to-nearest,
a hand-computed 1x2 case, the Optimal Brain Surgeon update with explicit inverses, and a trained
``digits_vit`` whose float logits are the reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.quant.vitmethods import gptq as gptq_mod
from vitquant.quant.vitmethods.gptq import (
    collect_hessians,
    gptq,
    gptq_quantize_weight,
    rtn_quantize_weight,
)
from vitquant.registry import load_model


def numpy_rtn(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-row symmetric round-to-nearest in float32, written out with NumPy."""
    qmax = 2 ** (bits - 1) - 1
    s = (np.abs(w).max(axis=1) / np.float32(qmax)).astype(np.float32)[:, None]  # (out, 1)
    return (np.clip(np.round(w / s), -qmax, qmax) * s).astype(np.float32)


def numpy_obs(w: np.ndarray, h: np.ndarray, bits: int, damp: float) -> np.ndarray:
    """GPTQ's update written as the paper's OBS step, re-inverting ``H`` over the remaining
    columns at every step (no Cholesky, no blocks): an independent reference."""
    qmax = 2 ** (bits - 1) - 1
    w = w.astype(np.float64).copy()  # (out, in)
    s = np.abs(w).max(axis=1) / qmax  # (out,), from the original weights
    h = h.astype(np.float64) + damp * np.mean(np.diag(h)) * np.eye(len(h))
    q = np.zeros_like(w)
    for j in range(w.shape[1]):
        hinv = np.linalg.inv(h[j:, j:])  # inverse Hessian over the columns F = {j, ...}
        q[:, j] = np.clip(np.round(w[:, j] / s), -qmax, qmax) * s
        err = (w[:, j] - q[:, j]) / hinv[0, 0]  # (out,)
        w[:, j:] -= err[:, None] * hinv[0][None, :]
    return q


def correlated(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) inputs whose columns are strongly correlated (low-rank mixing plus noise)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 8))
    return (z @ rng.standard_normal((8, d)) + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("diag", ["identity", "diagonal"])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_uncorrelated_hessian_is_round_to_nearest(diag, bits):
    # (a) no off-diagonal coupling: no error to propagate, GPTQ rounds each weight to nearest.
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((16, 40)).astype(np.float32)
    d = np.ones(40) if diag == "identity" else rng.uniform(0.1, 5.0, 40)
    w_hat, scales = gptq_quantize_weight(torch.from_numpy(w), torch.diag(torch.tensor(d)), bits)
    assert np.array_equal(w_hat.numpy(), numpy_rtn(w, bits))
    qmax = 2 ** (bits - 1) - 1
    np.testing.assert_allclose(scales.numpy(), np.abs(w).max(axis=1) / qmax, rtol=1e-6)
    assert torch.equal(w_hat, rtn_quantize_weight(torch.from_numpy(w), bits)[0])


def test_hand_computed_two_weights():
    # (b) W = [0.24, 0.7], 4 bits: scale = 0.7 / 7 = 0.1.
    # Round-to-nearest: [0.2, 0.7]. GPTQ with H = [[4, -1.9], [-1.9, 1]], damp 0.01:
    #   dampened H = H + 0.01 * mean(4, 1) * I = [[4.025, -1.9], [-1.9, 1.025]]
    #   det = 4.025 * 1.025 - 1.9^2 = 0.515625; Hinv = [[1.025, 1.9], [1.9, 4.025]] / det
    #   q1 = 0.1 * round(2.4) = 0.2, error w1 - q1 = 0.04
    #   w2 <- w2 - 0.04 * Hinv[0,1] / Hinv[0,0] = 0.7 - 0.04 * 1.9 / 1.025 = 0.6258537
    #   q2 = 0.1 * round(6.258537) = 0.6
    det = 4.025 * 1.025 - 1.9**2
    hinv00, hinv01 = 1.025 / det, 1.9 / det
    w2 = 0.7 - 0.04 * hinv01 / hinv00
    assert det == pytest.approx(0.515625) and w2 == pytest.approx(0.6258537, abs=1e-7)
    w = torch.tensor([[0.24, 0.7]])
    h = torch.tensor([[4.0, -1.9], [-1.9, 1.0]])
    w_hat, scales = gptq_quantize_weight(w, h, 4, damp=0.01)
    torch.testing.assert_close(scales, torch.tensor([0.1]))
    torch.testing.assert_close(w_hat, torch.tensor([[0.2, 0.6]]))
    # the quadratic loss (w - q) H (w - q)^T says why: 0.0012 for GPTQ, 0.0064 for nearest
    for q, loss in (([0.2, 0.6], 0.0012), ([0.2, 0.7], 0.0064)):
        d = w - torch.tensor([q])
        assert (d @ h @ d.T).item() == pytest.approx(loss, abs=1e-6)


@pytest.mark.parametrize("block", [1, 5, 128])
def test_matches_explicit_obs_updates(block):
    # Cholesky rows + lazy blocks == re-inverting H over the remaining columns at every step.
    x = correlated(256, 24, seed=1)
    w = np.random.default_rng(2).standard_normal((10, 24)).astype(np.float32)
    h = 2.0 / len(x) * x.astype(np.float64).T @ x
    w_hat, _ = gptq_quantize_weight(torch.from_numpy(w), torch.from_numpy(h), 4, block=block)
    np.testing.assert_allclose(w_hat.numpy(), numpy_obs(w, h, 4, 0.01), atol=1e-6)


def test_output_error_below_round_to_nearest():
    # (c) ||X W^T - X W_hat^T||_F on correlated inputs: GPTQ well below round-to-nearest.
    x = correlated(512, 64, seed=3)
    w = np.random.default_rng(4).standard_normal((32, 64)).astype(np.float32)
    h = torch.from_numpy(2.0 / len(x) * x.astype(np.float64).T @ x)
    w_gptq, _ = gptq_quantize_weight(torch.from_numpy(w), h, 4)
    y = x @ w.T
    err_gptq = np.linalg.norm(y - x @ w_gptq.numpy().T)
    err_rtn = np.linalg.norm(y - x @ numpy_rtn(w, 4).T)
    print(f"output error ||XW^T - XW_hat^T||_F: GPTQ {err_gptq:.2f}, nearest {err_rtn:.2f}")
    assert err_gptq < 0.6 * err_rtn


def test_dead_inputs_get_zero_weight():
    x = correlated(128, 12, seed=5)
    x[:, [3, 7]] = 0.0  # two inputs that never fire
    w = np.random.default_rng(6).standard_normal((5, 12)).astype(np.float32)
    h = torch.from_numpy(2.0 / len(x) * x.astype(np.float64).T @ x)
    w_hat, scales = gptq_quantize_weight(torch.from_numpy(w), h, 4)
    assert torch.all(w_hat[:, [3, 7]] == 0)
    # scales still come from the original weights, dead columns included
    np.testing.assert_allclose(scales.numpy(), np.abs(w).max(axis=1) / 7, rtol=1e-6)


def test_collect_hessians_matches_numpy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [(torch.randn(4, 7, 6), torch.zeros(4)), (torch.randn(2, 7, 6), torch.zeros(2))]
    hs = collect_hessians(model, batches, ["0", "2"])
    x0 = np.concatenate([b[0].reshape(-1, 6).numpy() for b in batches]).astype(np.float64)
    w0, b0 = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
    x2 = np.maximum(x0 @ w0.T + b0, 0)  # (42, 5): the second Linear's input
    for name, x in (("0", x0), ("2", x2)):
        np.testing.assert_allclose(hs[name].numpy(), 2.0 / len(x) * x.T @ x, rtol=1e-5, atol=1e-6)


def test_bad_input_raises():
    w, h = torch.randn(4, 6), torch.eye(6)
    with pytest.raises(VitquantError, match="2 to 8"):
        gptq_quantize_weight(w, h, 1)
    with pytest.raises(VitquantError, match=r"needs \(6, 6\)"):
        gptq_quantize_weight(w, torch.eye(5), 4)
    with pytest.raises(VitquantError, match="damp"):
        gptq_quantize_weight(w, h, 4, damp=-1.0)
    with pytest.raises(VitquantError, match="not positive definite"):
        gptq_quantize_weight(w, -torch.eye(6), 4, damp=0.0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(VitquantError, match="matches no layer"):
        gptq(model, [torch.randn(2, 6)], ignore=["3"])
    with pytest.raises(VitquantError, match="no calibration batches"):
        gptq(model, [])
    with pytest.raises(VitquantError, match="wbits"):
        gptq(model, [torch.randn(2, 6)], wbits=lambda name: 16)


# ---------------------------------------------------------------------------------------------
# (d) a trained digits_vit, weight-only, 128 calibration images.


@pytest.fixture(scope="module")
def digits_vit(digits_models):
    loaded = load_model("digits_vit")
    data = load_data("digits", calib=128, val=60, limit=256)
    calib = list(data.batches("calib", loaded.spec, batch_size=64))
    test = torch.cat([x for x, _ in data.batches("test", loaded.spec, batch_size=256)])
    return loaded.model, calib, test


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return (10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())).item()


def test_model_weights_on_grid_and_better_than_nearest(digits_vit):
    model, calib, test = digits_vit
    quantized = copy.deepcopy(model)
    scales = gptq(quantized, calib, wbits=4)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert list(scales) == linears  # every Linear, in forward order (head last)
    originals, params = dict(model.named_modules()), dict(quantized.named_parameters())
    for name in linears:
        w_orig = originals[name].weight.detach()
        torch.testing.assert_close(scales[name], w_orig.abs().amax(dim=1) / 7)
        codes = params[f"{name}.weight"].detach() / scales[name][:, None]
        assert torch.allclose(codes, codes.round(), atol=1e-4), name
        assert codes.round().abs().max() <= 7
    for name, p in model.named_parameters():  # biases, norms, the patch embedding: untouched
        if not (name.endswith(".weight") and name[: -len(".weight")] in scales):
            assert torch.equal(p, params[name]), name

    nearest = copy.deepcopy(model)
    for m in nearest.modules():
        if isinstance(m, nn.Linear):
            m.weight.data = rtn_quantize_weight(m.weight.data, 4)[0]
    with torch.no_grad():
        ref, out_gptq, out_rtn = model(test), quantized(test), nearest(test)
    s_gptq, s_rtn = sqnr_db(ref, out_gptq), sqnr_db(ref, out_rtn)
    print(f"digits_vit W4 logit SQNR: GPTQ {s_gptq:.2f} dB, round-to-nearest {s_rtn:.2f} dB")
    assert s_gptq > s_rtn + 3.0


def without_chain(monkeypatch, per_block: int | None = None) -> None:
    """Make ``gptq`` run the whole model for every layer (no cached block inputs)."""
    plan = gptq_mod._plan

    def patched(*args, **kw):
        p = plan(*args, **kw)
        assert p.chain and (per_block is None or len(p.block_of) == per_block * len(p.chain))
        p.chain, p.block_of = [], {}
        return p

    monkeypatch.setattr(gptq_mod, "_plan", patched)


def test_cached_blocks_equal_full_model_passes(digits_vit, monkeypatch):
    # Running one block on its cached inputs calibrates exactly like running the whole model.
    model, calib, _ = digits_vit
    cached = copy.deepcopy(model)
    gptq(cached, calib, wbits=4)
    without_chain(monkeypatch, per_block=4)  # qkv, proj, fc1, fc2
    full = copy.deepcopy(model)
    gptq(full, calib, wbits=4)
    for (name, a), b in zip(cached.named_parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_bits_per_layer_and_ignore(digits_vit):
    model, calib, _ = digits_vit
    quantized = copy.deepcopy(model)
    scales = gptq(
        quantized, calib, wbits=lambda n: 8 if n.endswith("fc2") else 4, ignore=["blocks.0.*"]
    )
    assert not any(n.startswith("blocks.0.") for n in scales)
    assert torch.equal(quantized.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    w = model.blocks[1].mlp.fc2.weight.detach()
    torch.testing.assert_close(scales["blocks.1.mlp.fc2"], w.abs().amax(dim=1) / 127)
    torch.testing.assert_close(scales["head"], model.head.weight.detach().abs().amax(dim=1) / 7)


def test_named_sequential_blocks_are_cached_correctly(monkeypatch):
    from collections import OrderedDict

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(
                OrderedDict(
                    (k, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6)))
                    for k in ("first", "second")
                )
            )
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.blocks(x))

    torch.manual_seed(0)
    model, batches = Net(), [torch.from_numpy(correlated(64, 6, seed=7)).reshape(4, 16, 6)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    plan = gptq_mod._plan(model, batches[0], names)
    assert plan.order == names and len(plan.chain) == 2
    assert plan.block_of == {
        "blocks.first.0": 0,
        "blocks.first.2": 0,
        "blocks.second.0": 1,
        "blocks.second.2": 1,
    }
    cached = copy.deepcopy(model)
    gptq(cached, batches, wbits=3)
    without_chain(monkeypatch)
    full = copy.deepcopy(model)
    gptq(full, batches, wbits=3)
    for a, b in zip(cached.parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
