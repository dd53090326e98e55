"""vitmethods against hand-computed values: RepQ-ViT's fold, SmoothQuant's scales, the Hadamard
matrices and the per-channel ranges (against NumPy)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.vitmethods import (
    KINDS,
    METHODS,
    OnlineHadamard,
    channel_ranges,
    get_method,
    hadamard_rotate,
    rotation_matrix,
)
from vitquant.quant.vitmethods.reparam import reparam_factors, reparam_pair
from vitquant.quant.vitmethods.rotate import hadamard
from vitquant.quant.vitmethods.smooth import smooth_scales

H4 = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=np.float64)


def sylvester(n: int) -> np.ndarray:
    """Sylvester's construction by Kronecker products (independent of the library's)."""
    h = np.ones((1, 1))
    while len(h) < n:
        h = np.kron(np.array([[1, 1], [1, -1]]), h)
    return h


def tiny_ln_linear() -> tuple[nn.LayerNorm, nn.Linear]:
    norm = nn.LayerNorm(4)
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
        lin.weight.copy_(torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.5, 1.0, 0.0, -1.0]]))
        lin.bias.copy_(torch.tensor([0.1, -0.2]))
    return norm, lin


def test_reparam_fold_by_hand():
    """Ranges lo=[-1,0,-2,2], hi=[1,4,2,3]: widths [2,4,4,1], mean 11/4, so r = w / (11/4) =
    [8,16,16,4]/11; m* = mean(lo / r) = mean([-11/8, 0, -11/8, 11/2]) = 11/16;
    delta = lo - r m* = [-1.5, -1, -3, 1.75]."""
    norm, lin = tiny_ln_linear()
    x = torch.randn(64, 4) * 3
    ref = lin(norm(x))
    lo, hi = torch.tensor([-1.0, 0.0, -2.0, 2.0]), torch.tensor([1.0, 4.0, 2.0, 3.0])
    r, delta = reparam_pair(norm, [lin], lo, hi)
    assert r.tolist() == pytest.approx([8 / 11, 16 / 11, 16 / 11, 4 / 11])
    assert delta.tolist() == pytest.approx([-1.5, -1.0, -3.0, 1.75])
    # gamma' = gamma / r, beta' = (beta - delta) / r
    assert norm.weight.tolist() == pytest.approx([11 / 8, 11 / 8, 11 / 32, -11 / 4])
    assert norm.bias.tolist() == pytest.approx([2.0625, 1.375, 1.375, -3.4375])
    # W' = W diag(r); b' = b + W delta = [0.1 + 5.0, -0.2 - 3.5]
    expected_w = [[8 / 11, 0, -16 / 11, 8 / 11], [4 / 11, 16 / 11, 0, -4 / 11]]
    assert lin.weight.detach().numpy() == pytest.approx(np.array(expected_w), abs=1e-7)
    assert lin.bias.tolist() == pytest.approx([5.1, -3.7])
    # every channel's measured range lands on [m*, m* + mean width] = [11/16, 11/16 + 11/4]
    assert ((lo.double() - delta) / r).tolist() == pytest.approx([11 / 16] * 4)
    assert ((hi.double() - delta) / r).tolist() == pytest.approx([11 / 16 + 11 / 4] * 4)
    torch.testing.assert_close(lin(norm(x)), ref, rtol=1e-5, atol=1e-5)


def test_reparam_factors_with_bits_map_grids_onto_one_grid():
    """bits=2 (3 levels): lo=[-1,-2,0], hi=[2,4,3] -> steps s=[1,2,1], zero points
    z=round(-lo/s)=[1,1,0]; common s~=4/3, z~=round(2/3)=1; r=s/s~=[3/4,3/2,3/4],
    delta=s(z~-z)=[0,0,1]."""
    lo, hi = torch.tensor([-1.0, -2.0, 0.0]), torch.tensor([2.0, 4.0, 3.0])
    r, delta = reparam_factors(lo, hi, bits=2)
    assert r.tolist() == pytest.approx([0.75, 1.5, 0.75])
    assert delta.tolist() == pytest.approx([0.0, 0.0, 1.0])
    s, z = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    for q in range(4):  # grid point q of each channel -> s~ (q - z~) on the common grid
        mapped = ((s * (q - z)).double() - delta) / r
        assert mapped.tolist() == pytest.approx([4 / 3 * (q - 1)] * 3)


def test_reparam_flat_channel_and_bad_bits():
    r, delta = reparam_factors(torch.tensor([0.0, 5.0, -1.0]), torch.tensor([2.0, 5.0, 1.0]))
    assert r.tolist() == pytest.approx([1.0, 1.0, 1.0])  # widths 2, 0 (flat), 2
    # m* = mean(0, -1) = -0.5 over the live channels; the flat one lands on m* too
    assert delta.tolist() == pytest.approx([0.5, 5.5, -0.5])
    with pytest.raises(VitquantError, match="constant"):
        reparam_factors(torch.zeros(3), torch.zeros(3))


def test_smooth_scales_by_hand():
    """alpha 0.5: s = sqrt(max|X| / max|W|); alpha 1: s = max|X|; alpha 0: s = 1 / max|W|."""
    act, w = torch.tensor([4.0, 1.0, 9.0]), torch.tensor([1.0, 4.0, 0.25])
    assert smooth_scales(act, w).tolist() == pytest.approx([2.0, 0.5, 6.0])
    assert smooth_scales(act, w, alpha=1.0).tolist() == pytest.approx([4.0, 1.0, 9.0])
    assert smooth_scales(act, w, alpha=0.0).tolist() == pytest.approx([1.0, 0.25, 4.0])
    # a dead channel is clamped at 1e-5 instead of dividing by zero
    assert smooth_scales(torch.tensor([0.0]), torch.tensor([1e-5])).item() == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512])
def test_hadamard_is_sylvester_and_orthogonal(n):
    h = hadamard(n).numpy()
    np.testing.assert_array_equal(h, sylvester(n))
    np.testing.assert_allclose(h @ h.T, n * np.eye(n))


def test_hadamard_refuses_other_orders():
    with pytest.raises(VitquantError, match="power-of-two"):
        hadamard(12)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_rotation_for_d4_is_signs_times_sylvester(seed):
    """Q = diag(s) H_4 / 2: H_4's first column is all ones, so Q[:, 0] = s / 2."""
    q, kind = rotation_matrix(4, seed=seed)
    signs = (q[:, 0] * 2).numpy()
    assert kind == "hadamard"
    assert set(np.abs(signs).tolist()) == {1.0}
    np.testing.assert_allclose(q.numpy(), np.diag(signs) @ H4 / 2, atol=1e-15)


@pytest.mark.parametrize(
    ("n", "kind"), [(128, "hadamard"), (384, "block-hadamard 3x128"), (12, "random-orthogonal")]
)
def test_rotations_are_orthogonal(n, kind):
    q, got = rotation_matrix(n, seed=3)
    assert got == kind
    np.testing.assert_allclose(q.numpy() @ q.numpy().T, np.eye(n), atol=1e-12)
    if kind.startswith("block"):  # diag(s) (I_3 kron H_128) / sqrt(128)
        rows = np.arange(n)
        signs = np.sign(q.numpy()[rows, rows // 128 * 128])  # H_128's first column is ones
        expected = np.diag(signs) @ np.kron(np.eye(3), sylvester(128)) / np.sqrt(128)
        np.testing.assert_allclose(q.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("n", [512, 384, 12])
def test_online_hadamard_equals_its_matrix(n):
    """The butterflies (or the dense matmul) compute u @ H for the H that is folded into fc2."""
    rot = OnlineHadamard(n, seed=5)
    q, _ = rotation_matrix(n, seed=5)
    np.testing.assert_allclose(rot.matrix().numpy(), q.numpy())
    u = torch.randn(2, 3, n)
    expected = u.double().numpy() @ q.numpy()  # (2, 3, n)
    np.testing.assert_allclose(rot(u).double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_rotate_uses_that_q_on_a_d4_vit():
    """After rotate, cls_token = (cls - mean(cls)) @ Q with Q = rotation_matrix(4, seed)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=4, depth=1, num_heads=1)
    with torch.no_grad():
        model.cls_token.normal_()
    cls = model.cls_token.detach().double().reshape(4).numpy()
    report = hadamard_rotate(model, seed=11)
    q, _ = rotation_matrix(4, seed=11)
    expected = (cls - cls.mean()) @ q.numpy()
    np.testing.assert_allclose(model.cls_token.detach().reshape(4).numpy(), expected, atol=1e-6)
    assert report["rotation"] == "hadamard" and report["dim"] == 4


def test_channel_ranges_against_numpy():
    """LayerNorm/GELU: their output; a Linear: its input (here the LayerNorm's output)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(3), nn.Linear(3, 2), nn.GELU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        model[0].bias.copy_(torch.tensor([1.0, 0.0, -3.0]))
    xs = [torch.randn(2, 5, 3) * 4, torch.randn(3, 5, 3)]
    ranges = channel_ranges(model, [(x, None) for x in xs], ["0", "1", "2"])

    x = np.concatenate([t.numpy().reshape(-1, 3) for t in xs]).astype(np.float64)  # (25, 3)
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    ln = (x - mu) / np.sqrt(var + 1e-5) * np.array([2.0, -1.0, 0.5]) + np.array([1.0, 0, -3])
    for name in ("0", "1"):
        np.testing.assert_allclose(ranges[name].min.numpy(), ln.min(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ranges[name].max.numpy(), ln.max(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ranges[name].absmax.numpy(), np.abs(ln).max(0), rtol=1e-5)
        assert ranges[name].count == 25
    with torch.no_grad():
        out = torch.cat([model(t).reshape(-1, 2) for t in xs]).numpy()  # (25, 2)
    np.testing.assert_array_equal(ranges["2"].max.numpy(), out.max(0))
    np.testing.assert_array_equal(ranges["2"].min.numpy(), out.min(0))


def test_channel_ranges_bad_input():
    model = nn.Sequential(OrderedDict(norm=nn.LayerNorm(3), fc=nn.Linear(3, 2)))
    with pytest.raises(VitquantError, match="no module 'nrom'. Did you mean: norm"):
        channel_ranges(model, [(torch.randn(2, 3), None)], ["nrom"])
    with pytest.raises(VitquantError, match="empty"):
        channel_ranges(model, [], ["norm"])
    with pytest.raises(VitquantError, match="re-iterable"):
        channel_ranges(model, torch.randn(2, 3), ["norm"])


def test_registry():
    assert set(METHODS) == {"ln-reparam", "smoothquant", "rotate"}
    for name, method in METHODS.items():
        assert method.name == name and method.kind in KINDS
        assert method.description and "\n" not in method.description
    assert get_method("rotate") is METHODS["rotate"]
    with pytest.raises(VitquantError, match="ln-reparam, rotate, smoothquant"):
        get_method("quarot")
