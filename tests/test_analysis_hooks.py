"""Observation points: what is hooked, which module each point belongs to, and the softmax."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitquant.analysis.hooks import (
    block_names,
    layer_kind,
    observation_points,
    observe,
    unfused_attention,
)
from vitquant.layers import quantizable_names
from vitquant.registry import load_model


@pytest.fixture(scope="module")
def vit(digits_models):
    return load_model("digits_vit").model


def _example(model_name: str, n: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    from vitquant.registry import get_spec

    c, h, w = get_spec(model_name).input_size
    return torch.randn(n, c, h, w)


def test_vit_points_and_modules(vit):
    points = observation_points(vit, _example("digits_vit"), family="vit")
    by_point = {p.point: p for p in points}
    # Every Linear/Conv output is observed, as its own module.
    for name in quantizable_names(vit):
        assert by_point[name].module == name
    # LayerNorm / GELU / softmax belong to the Linear that consumes them.
    expected = {
        "blocks.0.norm1": ("blocks.0.attn.qkv", "norm"),
        "blocks.0.norm2": ("blocks.0.mlp.fc1", "norm"),
        "blocks.0.mlp.act": ("blocks.0.mlp.fc2", "act"),
        "blocks.2.attn.softmax": ("blocks.2.attn.proj", "softmax"),
        "norm": ("head", "norm"),
        "blocks.1.attn.qkv": ("blocks.1.attn.qkv", "qkv"),
        "blocks.1.attn.proj": ("blocks.1.attn.proj", "proj"),
        "head": ("head", "head"),
        "patch_embed.proj": ("patch_embed.proj", "patch_embed"),
    }
    for point, (module, kind) in expected.items():
        assert (by_point[point].module, by_point[point].kind) == (module, kind), point
    assert len(points) == 3 * 8 + 3  # 8 points per block + patch_embed, final norm, head
    assert by_point["blocks.2.mlp.fc2"].block == 2 and by_point["head"].block is None


def test_softmax_point_is_the_attention_probabilities(vit):
    """The captured tensor equals softmax(q k^T / sqrt(d)) recomputed from the qkv output."""
    x = _example("digits_vit")
    points = observation_points(vit, x, family="vit")
    keep = [p for p in points if p.point in ("blocks.0.attn.qkv", "blocks.0.attn.softmax")]
    got = {}
    with torch.no_grad(), observe(vit, keep, lambda p, o: got.__setitem__(p.point, o.clone())):
        vit(x)
    attn = vit.blocks[0].attn
    qkv = got["blocks.0.attn.qkv"]  # (B, N, 3 * heads * head_dim)
    b, n, _ = qkv.shape
    q, k, _v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    ref = torch.softmax((q * attn.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)
    torch.testing.assert_close(got["blocks.0.attn.softmax"], ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ref.sum(-1), torch.ones(()))


def test_observing_leaves_outputs_and_fused_flag_unchanged(vit):
    x = _example("digits_vit")
    flags = [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")]
    with torch.no_grad():
        before = vit(x)
        points = observation_points(vit, x, family="vit")
        with observe(vit, points, lambda p, o: None):
            during = vit(x)
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    assert [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")] == flags
    assert all(not m._forward_hooks for m in vit.modules())


def test_unfused_attention_restores_on_error(vit):
    flags = [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")]
    with pytest.raises(RuntimeError), unfused_attention(vit):
        raise RuntimeError("boom")
    assert [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")] == flags


def test_cnn_observes_only_linear_and_conv(digits_models):
    model = load_model("digits_cnn").model
    points = observation_points(model, _example("digits_cnn"), family="cnn")
    assert [(p.point, p.module, p.kind) for p in points] == [
        ("conv1", "conv1", "conv"),
        ("conv2", "conv2", "conv"),
        ("conv3", "conv3", "conv"),
        ("fc", "fc", "head"),
    ]
    assert all(p.channel_dim == 1 for p in points[:3])


def test_deit_small_layer_names():
    model = load_model("timm:deit_small_patch16_224", random_weights=True, num_classes=10).model
    points = observation_points(model, torch.randn(1, 3, 224, 224), family="vit")
    by_point = {p.point: p for p in points}
    assert len(points) == 1 + 12 * 8 + 2
    assert by_point["blocks.11.attn.softmax"].module == "blocks.11.attn.proj"
    assert by_point["blocks.11.attn.softmax"].block == 11
    assert by_point["blocks.0.mlp.act"].module == "blocks.0.mlp.fc2"
    assert by_point["norm"].module == "head"


def test_kinds_and_blocks_of_cnn_layers():
    assert layer_kind("f.1", nn.Conv2d(8, 8, 3, groups=8)) == "conv_dw"
    assert layer_kind("f.2", nn.Conv2d(8, 16, 1)) == "conv_pw"
    assert layer_kind("f.0", nn.Conv2d(3, 8, 3)) == "conv"
    assert layer_kind("classifier.1", nn.Linear(8, 2), head="classifier.1") == "head"
    blocks = block_names(["conv1", "layer1.0.conv1", "layer1.1.conv2", "layer2.0.conv1", "fc"])
    assert blocks == {
        "conv1": (None, None),
        "layer1.0.conv1": (0, "layer1.0"),
        "layer1.1.conv2": (1, "layer1.1"),
        "layer2.0.conv1": (2, "layer2.0"),
        "fc": (None, None),
    }
