"""The ViT transforms leave the float model's logits unchanged and change what a quantizer sees.

Invariance is measured as max |logits after - logits before| / max |logits before| on random
and trained models; the effects are re-measured with forward hooks on 128 CIFAR-10 images of
the trained cifar_vit.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import ResPostBlock, VisionTransformer
from torch import nn

from vitquant.errors import VitquantError
from vitquant.models.vit import cifar_vit, digits_vit
from vitquant.quant.vitmethods import (
    METHODS,
    OnlineHadamard,
    channel_ranges,
    hadamard_rotate,
    ln_reparam,
    smoothquant,
)

TOL = 1e-4
small = partial(VisionTransformer, img_size=16, patch_size=4, num_classes=10)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared 2-core machine: one thread each, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random LayerNorm affines and LayerScale gammas, so every fold has something to fold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                n = module.weight.shape
                module.weight.copy_(1 + 0.5 * torch.randn(n, generator=gen))
                module.bias.copy_(0.5 * torch.randn(n, generator=gen))
            gamma = getattr(module, "gamma", None)
            if isinstance(gamma, nn.Parameter):
                gamma.copy_(0.1 + 0.2 * torch.rand(gamma.shape, generator=gen))
        for name in ("cls_token", "pos_embed"):
            getattr(model, name).normal_(0, 0.5, generator=gen)
    return model.eval()


# name -> (builder, input shape of one image)
RANDOM_MODELS = {
    "cifar_vit": (lambda: cifar_vit(), (3, 32, 32)),
    "digits_vit": (lambda: digits_vit(), (1, 8, 8)),
    "layerscale": (
        lambda: small(embed_dim=64, depth=2, num_heads=4, init_values=1e-1),
        (3, 16, 16),
    ),
    "avg_fc_norm": (
        lambda: small(embed_dim=64, depth=2, num_heads=4, global_pool="avg"),
        (3, 16, 16),
    ),
    "avg_final_norm": (
        lambda: small(embed_dim=64, depth=2, num_heads=4, global_pool="avg", fc_norm=False),
        (3, 16, 16),
    ),
    # 96 = 3 x 32: block Hadamard; 36: random orthogonal; no qkv bias, register tokens, norms
    # inside attention and MLP, position embedding without the class token
    "odd_dims": (
        lambda: small(
            embed_dim=36,
            depth=2,
            num_heads=3,
            qkv_bias=False,
            reg_tokens=2,
            scale_mlp_norm=True,
            scale_attn_norm=True,
            no_embed_class=True,
        ),
        (3, 16, 16),
    ),
    "block_hadamard": (lambda: small(embed_dim=96, depth=2, num_heads=3), (3, 16, 16)),
}


def relative_change(model: nn.Module, transformed: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref, out = model(x), transformed(x)
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model_name", list(RANDOM_MODELS))
def test_float_invariance_random_models(model_name, method):
    build, shape = RANDOM_MODELS[model_name]
    torch.manual_seed(0)
    model = perturbed(build())
    x = torch.randn(8, *shape)
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(4))]
    transformed = copy.deepcopy(model)
    report = METHODS[method].fn(transformed, batches)
    assert report["method"] == method
    assert relative_change(model, transformed, x) < TOL
    # the original is untouched and a fresh input agrees too (nothing fitted to the batches)
    assert relative_change(model, transformed, torch.randn(4, *shape) * 2) < TOL


@pytest.mark.parametrize(
    "apply",
    [
        partial(ln_reparam, bits=4),
        partial(smoothquant, alpha=0.8),
        lambda model, _batches: hadamard_rotate(model, seed=3, online_fc2=False),
    ],
    ids=["ln-reparam-bits4", "smoothquant-alpha0.8", "rotate-offline-only"],
)
def test_float_invariance_with_options(apply):
    model = perturbed(digits_vit(), seed=1)
    x = torch.randn(8, 1, 8, 8)
    transformed = copy.deepcopy(model)
    apply(transformed, [(x, torch.zeros(8))])
    assert relative_change(model, transformed, x) < TOL


@pytest.fixture(scope="module")
def trained(assets):
    """The trained cifar_vit and 128 CIFAR-10 calibration images in two batches."""
    from vitquant.data import load_data
    from vitquant.registry import load_model

    loaded = load_model("cifar_vit")
    bundle = load_data("cifar10", calib=128, val=0)
    batches = list(bundle.batches("calib", loaded.spec, batch_size=64, workers=0))
    return loaded.model.eval(), batches


@pytest.mark.parametrize("method", list(METHODS))
def test_float_invariance_trained_cifar_vit(trained, method):
    model, batches = trained
    x = batches[0][0][:32]  # (32, 3, 32, 32)
    transformed = copy.deepcopy(model)
    METHODS[method].fn(transformed, batches[:1])
    assert relative_change(model, transformed, x) < TOL
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), transformed(x).argmax(1))


def test_ln_reparam_equalises_channel_widths(trained):
    model, batches = trained
    norms = [f"blocks.{i}.norm{j}" for i in range(12) for j in (1, 2)] + ["norm"]
    transformed = copy.deepcopy(model)
    report = ln_reparam(transformed, batches)
    assert list(report["layers"]) == norms
    after = channel_ranges(transformed, batches, norms)  # re-measured on the new model
    for name in norms:
        ratio_after = (after[name].width.max() / after[name].width.min()).item()
        assert report["layers"][name]["width_ratio_before"] > 1.5  # measured: 2.0 - 2.6
        assert ratio_after < 1.001
        assert report["layers"][name]["width_ratio_after"] == pytest.approx(1.0, abs=1e-6)


def test_smoothquant_balances_activations_and_weights(trained):
    """alpha 0.5: afterwards max|X_j| = max|W_j| for every input channel j (the paper's aim),
    for the LayerNorm pairs and for attn.proj behind the value path."""
    model, batches = trained
    transformed = copy.deepcopy(model)
    smoothquant(transformed, batches, alpha=0.5)
    readers = {"blocks.3.norm1": ["blocks.3.attn.qkv"], "blocks.7.norm2": ["blocks.7.mlp.fc1"]}
    readers |= {"norm": ["head"], "blocks.5.attn.proj": ["blocks.5.attn.proj"]}
    after = channel_ranges(transformed, batches, list(readers))
    for name, linears in readers.items():
        weights = [transformed.get_submodule(n).weight.detach() for n in linears]
        w_absmax = torch.cat(weights).abs().amax(0)  # (C,)
        torch.testing.assert_close(after[name].absmax, w_absmax, rtol=1e-4, atol=1e-6)


def _ratio(absmax: torch.Tensor) -> float:
    return (absmax.max() / absmax.median()).item()


def test_rotate_flattens_per_channel_ranges(trained):
    model, batches = trained
    names = [f"blocks.{i}.{k}" for i in range(12) for k in ("attn.qkv", "mlp.fc2")]
    transformed = copy.deepcopy(model)
    report = hadamard_rotate(transformed)
    assert report["rotation"] == report["online_rotation"] == "hadamard"
    assert len(report["layernorms_replaced"]) == 25
    assert sum(isinstance(m, nn.LayerNorm) for m in transformed.modules()) == 0
    assert sum(isinstance(m, OnlineHadamard) for m in transformed.modules()) == 12
    before = channel_ranges(model, batches, names)
    after = channel_ranges(transformed, batches, names)
    for kind, gain in (("attn.qkv", 1.15), ("mlp.fc2", 3.0)):
        keys = [n for n in names if n.endswith(kind)]
        mean_before = sum(_ratio(before[n].absmax) for n in keys) / 12
        mean_after = sum(_ratio(after[n].absmax) for n in keys) / 12
        # measured: qkv 1.79 -> 1.42, fc2 9.7 -> 1.9 (max / median per-channel abs-max)
        assert mean_after * gain < mean_before, (kind, mean_before, mean_after)


def test_rotated_model_exports():
    """What the quantizer gets: the rotated model traces with torch.export (dynamic batch)."""
    from vitquant.quant.pt2e import export_model

    model = perturbed(digits_vit())
    rotated = copy.deepcopy(model)
    hadamard_rotate(rotated)
    x = torch.randn(4, 1, 8, 8)
    gm = export_model(rotated, x)
    torch.testing.assert_close(gm(x[:3]), model(x[:3]), rtol=1e-4, atol=1e-4)


CNN = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))


@pytest.mark.parametrize("method", list(METHODS))
def test_refuses_a_cnn(method):
    model = copy.deepcopy(CNN)
    batches = [(torch.randn(2, 3, 32, 32), torch.zeros(2))]
    with pytest.raises(VitquantError, match="Sequential: not a timm VisionTransformer"):
        METHODS[method].fn(model, batches)


def test_refuses_other_vits_and_options():
    batches = [(torch.randn(2, 3, 16, 16), torch.zeros(2))]
    post = small(embed_dim=32, depth=1, num_heads=2, block_fn=ResPostBlock)
    with pytest.raises(VitquantError, match="blocks.0 is a ResPostBlock"):
        ln_reparam(post, batches)
    with pytest.raises(VitquantError, match="global_pool='max'"):
        hadamard_rotate(small(embed_dim=32, depth=1, num_heads=2, global_pool="max"))
    with pytest.raises(VitquantError, match="pre_norm"):
        hadamard_rotate(small(embed_dim=32, depth=1, num_heads=2, pre_norm=True))
    rotated = small(embed_dim=32, depth=1, num_heads=2)
    hadamard_rotate(rotated)
    with pytest.raises(VitquantError, match="RMSNorm.*apply rotate last"):
        smoothquant(rotated, batches)
    with pytest.raises(VitquantError, match="alpha must be a number in"):
        smoothquant(small(embed_dim=32, depth=1, num_heads=2), batches, alpha=1.5)
    with pytest.raises(VitquantError, match="bits must be an integer"):
        ln_reparam(small(embed_dim=32, depth=1, num_heads=2), batches, bits=1)
