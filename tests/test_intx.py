"""8da4w (``vitquant.quant.lowbit.intx``): int4 weights in PyTorch and on XNNPACK's kernels.

References: the float model's logits, the float weights (a per-group rounding bound) and the
eager 8da4w model for its lowered ``.pte``. Lowering time grows with the number of Linear layers,
so the program is lowered from a one-block ``cifar_vit`` (same widths: 128 features, 4 heads,
MLP 512); the eager checks use the full trained ``cifar_vit``.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.models.vit import CIFAR_VIT_CONFIG
from vitquant.quant.lowbit.intx import (
    count_int4_linears,
    int4_linears,
    load_8da4w,
    lower_8da4w,
    quantize_8da4w,
)
from vitquant.registry import load_model


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return (10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())).item()


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.fixture(scope="module")
def cifar_vit():
    loaded = load_model("cifar_vit")
    data = load_data("cifar10", calib=0, val=0, limit=20)
    x, _ = next(iter(data.batches("test", loaded.spec, batch_size=20)))
    return loaded.model, x


def test_eager_8da4w_holds_int4_and_tracks_float(cifar_vit):
    model, x = cifar_vit
    q = quantize_8da4w(model, group_size=32)
    names = linear_names(model)
    assert int4_linears(q) == names and count_int4_linears(q) == 49
    assert count_int4_linears(model) == 0  # the float model is left as it was
    modules = dict(q.named_modules())
    for name in names:
        w = dict(model.named_modules())[name].weight.detach()  # (out, in)
        deq = modules[name].weight.dequantize()  # (out, in)
        amax = w.reshape(w.shape[0], -1, 32).abs().amax(dim=-1, keepdim=True)  # (out, in/32, 1)
        err = (w - deq).reshape(w.shape[0], -1, 32).abs()
        # half a step of a symmetric 4-bit grid over each group of 32: at most amax / 14
        assert torch.all(err <= amax / 14 + 1e-7), name
    with torch.no_grad():
        ref, out = model(x[:4]), q(x[:4])
    s = sqnr_db(ref, out)
    print(f"cifar_vit 8da4w (group 32) eager logit SQNR vs float, 4 images: {s:.2f} dB")
    assert s > 15.0


def test_group_size_and_ignore(cifar_vit):
    model, _ = cifar_vit
    with pytest.raises(VitquantError, match="does not divide the 128 input features"):
        quantize_8da4w(model, group_size=48)
    with pytest.raises(VitquantError, match="group_size must be"):
        quantize_8da4w(model, group_size=0)
    q = quantize_8da4w(model, group_size=None, ignore=["head"])
    assert "head" not in int4_linears(q) and count_int4_linears(q) == 48
    # per output channel: one scale per row
    assert q.blocks[0].attn.qkv.weight.scale.numel() == 3 * 128
    with pytest.raises(VitquantError, match="no int4 Linear"):
        lower_8da4w(model, torch.zeros(1, 3, 32, 32), "/nonexistent/never.pte")


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    torch.manual_seed(0)
    model = VisionTransformer(num_classes=10, **{**CIFAR_VIT_CONFIG, "depth": 1}).eval()
    x = torch.randn(10, 3, 32, 32)
    q = quantize_8da4w(model)
    path = tmp_path_factory.mktemp("intx") / "vit_8da4w.pte"
    return model, q, x, lower_8da4w(q, x[:4], path, max_batch=8)


def test_pte_linears_delegated_to_xnnpack(lowered):
    model, _, _, export = lowered
    assert export.int4_layers == linear_names(model)  # qkv, proj, fc1, fc2, head
    assert export.linear_delegated == 5 and export.linear_outside == 0
    assert export.max_batch == 8


def test_pte_matches_eager_8da4w(lowered):
    model, q, x, export = lowered
    run = load_8da4w(export.path, threads=1)
    with torch.no_grad():
        eager = q(x)
    for n in (4, 10):  # 10 > max_batch: the runner splits it
        s = sqnr_db(eager[:n], run(x[:n]))
        print(f".pte vs eager 8da4w logit SQNR, batch {n}: {s:.2f} dB")
        assert s > 30.0


def test_pte_weights_take_under_a_byte(lowered):
    # int8 weights alone would need >= 1 byte per Linear weight; int4 + a scale per 32: ~0.6
    model, _, _, export = lowered
    size = export.path.stat().st_size
    fp32 = sum(4 * p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    rest = fp32 - 4 * linear  # everything but the Linear weights, in fp32
    print(f"8da4w .pte {size} bytes; fp32 parameters {fp32} bytes; {linear} Linear weights")
    assert size < fp32 / 3
    assert (size - rest) / linear < 0.75


def test_gptq_scales_kept_exactly():
    # GPTQ's grid (codes in [-7, 7] x per-channel scale) fits int4: the 8da4w layers hold
    # exactly GPTQ's weights when given its scales.
    from vitquant.quant.vitmethods.gptq import gptq

    torch.manual_seed(1)
    model = VisionTransformer(num_classes=10, **{**CIFAR_VIT_CONFIG, "depth": 1}).eval()
    scales = gptq(model, [torch.randn(8, 3, 32, 32)], wbits=4)
    q = quantize_8da4w(model, group_size=None, scales=scales)
    assert count_int4_linears(q) == 5
    originals = dict(model.named_modules())
    for name, m in q.named_modules():
        if name in scales:
            assert torch.equal(m.weight.scale.reshape(-1), scales[name])
            assert int(m.weight.qdata.abs().max()) <= 7
            torch.testing.assert_close(
                m.weight.dequantize(), originals[name].weight.detach(), rtol=0, atol=1e-7
            )
    with pytest.raises(VitquantError, match="group_size=None"):
        quantize_8da4w(model, scales=scales)
    with pytest.raises(VitquantError, match="needs \\(384,\\)"):
        quantize_8da4w(model, group_size=None, scales={"blocks.0.attn.qkv": torch.ones(3)})
