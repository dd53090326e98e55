"""LowBitQuantizer / quantize_lowbit on tiny models and randomly initialised ViTs: the converted
graphs hold weights on the W-bit grid, quantize what the recipe says (attention matmuls, log2
softmax, twin-uniform GELU, LayerNorm) and track the float model as the bit width allows."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from vitquant.analysis.hooks import unfused_attention
from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.models.vit import DIGITS_VIT_CONFIG, cifar_vit, digits_vit
from vitquant.quant.lowbit import (
    BitSetting,
    BitsPlan,
    Log2FakeQuant,
    LowBitPTQ,
    LowBitQuantizer,
    TwinUniformFakeQuant,
    bits_label,
    quantize_lowbit,
)
from vitquant.quant.pt2e import WEIGHT_OPS, export_model, weight_dtypes
from vitquant.registry import get_spec

DEPTH = DIGITS_VIT_CONFIG["depth"]
QD = torch.ops.quantized_decomposed
MATMULS = {torch.ops.aten.matmul.default, torch.ops.aten.bmm.default}


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    return 10 * math.log10(ref.pow(2).sum().item() / (ref - test).pow(2).sum().item())


def module_of(node) -> str:
    return list(node.meta["nn_module_stack"].values())[-1][0]


def is_dq(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.target in (
        QD.dequantize_per_tensor.default,
        QD.dequantize_per_channel.default,
    )


def layers(gm) -> dict[str, torch.fx.Node]:
    """Linear/Conv module name -> its op node in a converted graph."""
    return {module_of(n): n for n in gm.graph.nodes if n.target in WEIGHT_OPS}


def weight_grid(gm, node) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(int codes, per-channel scales, qmin, qmax) of the weight a converted op reads."""
    dq = node.args[1]
    assert dq.target == QD.dequantize_per_channel.default
    codes, scale = (getattr(gm, a.target) for a in dq.args[:2])
    return codes, scale, dq.args[4], dq.args[5]


def input_range(node) -> tuple[int, int] | None:
    """(qmin, qmax) of the quantized input of ``node`` (None: float input)."""
    x = node.args[0]
    return (x.args[3], x.args[4]) if is_dq(x) else None


def outputs_of(gm, cls, x) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(module, input, output) of every ``cls`` submodule of ``gm`` over one forward pass."""
    seen = []
    handles = [
        m.register_forward_hook(lambda mod, i, o: seen.append((mod, i[0], o)))
        for m in gm.modules()
        if isinstance(m, cls)
    ]
    with torch.no_grad():
        gm(x)
    for h in handles:
        h.remove()
    return seen


# -- digits_vit (random weights) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = digits_vit().eval()
    bundle = load_data("digits", calib=64)
    spec = get_spec("digits_vit")
    x, _ = next(bundle.batches("test", spec, batch_size=64))
    with torch.no_grad():
        ref = model(x)
    return model, bundle, spec, x, ref


@pytest.fixture(scope="module")
def runs(setup):
    """quantize_lowbit results by recipe, computed once."""
    model, bundle, spec, _, _ = setup
    cache = {}

    def run(cfg: LowBitPTQ, **kw):
        key = (cfg, tuple(sorted((k, str(v)) for k, v in kw.items())))
        if key not in cache:
            cache[key] = quantize_lowbit(model, bundle, spec, cfg, **kw)
        return cache[key]

    return run


@pytest.mark.parametrize("bits", [8, 4])
def test_every_weight_lies_on_the_w_bit_grid(setup, runs, bits):
    model = setup[0]
    qm = runs(LowBitPTQ(wbits=bits, abits=bits))
    qmax = 2 ** (bits - 1) - 1
    found = layers(qm.module)
    assert sorted(found) == sorted(qm.int8_layers) and qm.float_layers == []
    for name, node in found.items():
        codes, scale, lo, hi = weight_grid(qm.module, node)
        assert (lo, hi) == (-qmax, qmax) and codes.dtype == torch.int8
        assert int(codes.abs().max()) <= qmax
        rows = codes.reshape(len(codes), -1)
        assert max(len(torch.unique(r)) for r in rows) <= 2 * qmax + 1
        # independent reference: round(w / (amax / qmax)) per output channel
        w = model.get_submodule(name).weight.detach().reshape(len(codes), -1)
        ref_scale = w.abs().amax(1) / qmax
        torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)
        assert torch.equal(rows.float(), torch.round(w * (1.0 / ref_scale[:, None])))
        assert input_range(node) == (0, 2**bits - 1)


def test_w8a8_tracks_the_float_model_and_fewer_bits_track_it_less(setup, runs):
    x, ref = setup[3], setup[4]
    sqnr = {b: sqnr_db(ref, runs(LowBitPTQ(wbits=b, abits=b))(x).detach()) for b in (8, 6, 4)}
    assert sqnr[8] > 25
    assert sqnr[8] > sqnr[6] + 3 > sqnr[4] + 6  # measured: 32.1, 20.6, 8.2 dB
    note = runs(LowBitPTQ(wbits=4, abits=4)).notes[0]
    assert note.startswith("simulated W4A4: quantize/dequantize emulation")


def test_attention_matmuls_get_both_inputs_quantized(setup, runs):
    x, ref = setup[3], setup[4]
    qm = runs(LowBitPTQ(quantize_attention=True))
    matmuls = [n for n in qm.module.graph.nodes if n.target in MATMULS]
    assert len(matmuls) == 2 * DEPTH  # q @ k^T and attn @ v per block
    for node in matmuls:
        assert all(is_dq(a) and a.args[3:5] == (0, 255) for a in node.args[:2]), node.name
    plain = runs(LowBitPTQ())
    assert not any(
        is_dq(a) for n in plain.module.graph.nodes if n.target in MATMULS for a in n.args
    )
    assert sqnr_db(ref, qm(x).detach()) > 25


def test_log2_softmax_twin_gelu_and_layernorm(setup, runs):
    x = setup[3]
    cfg = LowBitPTQ(
        quantize_attention=True, softmax="log2-sqrt2", gelu="twin", quantize_layernorm=True
    )
    assert bits_label(cfg) == "W8A8-attn-log2sqrt2-twin-ln"
    gm = runs(cfg).module
    # the probabilities: only sqrt2^-k (k = 0 .. 254) or 0
    seen = outputs_of(gm, Log2FakeQuant, x)
    assert len(seen) == DEPTH
    for mod, inp, out in seen:
        assert (mod.bits, mod.base) == (8, "sqrt2")
        assert torch.allclose(inp.sum(-1), torch.ones(()))  # it really reads the softmax
        nz = out[out > 0]
        k = -2 * torch.log2(nz)
        assert float(out.max()) <= 1 and torch.allclose(k, k.round(), atol=1e-4)
        assert int(k.round().max()) <= 254 and bool((out >= 0).all())
    # GELU outputs: negatives on delta_neg * [-128..0], the rest on delta_pos * [0..127]
    seen = outputs_of(gm, TwinUniformFakeQuant, x)
    assert len(seen) == DEPTH
    for mod, inp, out in seen:
        ratio = math.log2(mod.delta_pos / mod.delta_neg)
        assert ratio == round(ratio) and mod.delta_neg >= 0.17 / 128
        neg, pos = out[inp < 0] / mod.delta_neg, out[inp >= 0] / mod.delta_pos
        assert torch.allclose(neg, neg.round(), atol=1e-4) and neg.min() >= -128
        assert torch.allclose(pos, pos.round(), atol=1e-4) and pos.max() <= 127
    # LayerNorm inputs quantized; the final norm's output reaches the head quantized once
    norms = [n for n in gm.graph.nodes if n.target == torch.ops.aten.layer_norm.default]
    assert len(norms) == 2 * DEPTH + 1 and all(is_dq(n.args[0]) for n in norms)
    path, node = [], layers(gm)["head"].args[0]
    while node is not norms[-1]:
        path.append(node.target)
        node = node.args[0]
    assert path.count(QD.quantize_per_tensor.default) == 1


def test_rules_change_only_the_matched_layers_and_ignore_keeps_float(setup, runs):
    base = runs(LowBitPTQ(wbits=4, abits=4))
    qm = runs(LowBitPTQ(wbits=4, abits=4, rules=("blocks.1.*=8/8",)), ignore=["blocks.0.mlp.fc1"])
    assert any(n.startswith("W8A8 (rules): blocks.1.attn.qkv") for n in qm.notes)
    assert "blocks.0.mlp.fc1" in qm.float_layers and qm.ignored == ["blocks.0.mlp.fc1"]
    assert weight_dtypes(qm.module)["blocks.0.mlp.fc1"] == torch.float32
    before, after = layers(base.module), layers(qm.module)
    assert input_range(after["blocks.0.mlp.fc1"]) is None
    for name, node in after.items():
        if name == "blocks.0.mlp.fc1":
            continue
        codes, scale, lo, hi = weight_grid(qm.module, node)
        if name.startswith("blocks.1."):
            assert (lo, hi) == (-127, 127) and input_range(node) == (0, 255)
        else:  # untouched: the same codes, scales and input grid as without the rule
            codes0, scale0, _, _ = weight_grid(base.module, before[name])
            assert (lo, hi) == (-7, 7) and input_range(node) == (0, 15)
            assert torch.equal(codes, codes0) and torch.equal(scale, scale0)
            assert node.args[0].args[1:3] == before[name].args[0].args[1:3]


def test_weight_scales_are_kept_exactly(setup, runs):
    model, bundle, spec = setup[:3]
    model = copy.deepcopy(model)
    fc2 = model.get_submodule("blocks.2.mlp.fc2")
    # round fc2 onto a grid minmax would not choose: 1.25 x its own 4-bit scale
    scales = fc2.weight.detach().abs().amax(1) / 7 * 1.25
    codes = torch.clamp(torch.round(fc2.weight.detach() / scales[:, None]), -7, 7)
    with torch.no_grad():
        fc2.weight.copy_(codes * scales[:, None])
    qm = quantize_lowbit(
        model, bundle, spec, LowBitPTQ(wbits=4, abits=4), weight_scales={"blocks.2.mlp.fc2": scales}
    )
    got_codes, got_scale, _, _ = weight_grid(qm.module, layers(qm.module)["blocks.2.mlp.fc2"])
    assert torch.equal(got_scale, scales) and torch.equal(got_codes.float(), codes)
    with pytest.raises(VitquantError, match="not on the 4-bit grid"):
        quantize_lowbit(
            model,
            bundle,
            spec,
            LowBitPTQ(wbits=4, abits=4, calib=8),
            weight_scales={"blocks.2.mlp.fc2": scales / 3},
        )


def test_bad_input_is_refused_with_the_fix(setup):
    model, bundle, spec = setup[:3]
    with pytest.raises(VitquantError, match="from 2 to 8"):
        LowBitPTQ(wbits=9)
    with pytest.raises(VitquantError, match="expected GLOB=W/A"):
        LowBitPTQ(rules=("blocks.0.*:8/8",))
    with pytest.raises(VitquantError, match="quantize_attention=True"):
        LowBitPTQ(softmax="log2")
    with pytest.raises(VitquantError, match="choose one of uniform, twin"):
        LowBitPTQ(gelu="twins")
    cfg = LowBitPTQ(rules=("blocks.0.attn.qvk=8/8",), calib=8)
    with pytest.raises(VitquantError, match=r"matches no module.*blocks.0.attn.qkv"):
        quantize_lowbit(model, bundle, spec, cfg)
    with pytest.raises(VitquantError, match="not Linear/Conv layers"):
        quantize_lowbit(model, bundle, spec, replace(cfg, rules=()), weight_scales={"blocks": 1})


# -- tiny models and cifar_vit through the quantizer directly ------------------------------------


class TwoHeads(nn.Module):
    """One input read by two Linears that ask for different activation bits."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        return self.a(x) + self.b(x)


def convert(model, quantizer, example, calib):
    with unfused_attention(model):
        graph = export_model(model, example)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_pt2e(prepared)


def test_a_tensor_read_by_two_layers_is_quantized_once_at_the_wider_width():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    plan = BitsPlan(BitSetting(8, 4), (("b", BitSetting(8, 6)),))
    quantizer = LowBitQuantizer(plan=plan)
    x = torch.randn(16, 6)
    gm = convert(model, quantizer, x[:4], [x])
    qs = [n for n in gm.graph.nodes if n.target == QD.quantize_per_tensor.default]
    assert len(qs) == 1 and qs[0].args[3:5] == (0, 63)  # one 6-bit grid for both readers
    assert any("quantized once at 6 bits" in n for n in quantizer.notes)
    # the shared grid is the min/max grid of x at 6 bits
    lo, hi = x.min().item(), x.max().item()
    assert qs[0].args[1] == pytest.approx((hi - lo) / 63, rel=1e-6)


def test_cifar_vit_w8a8_with_attention():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = cifar_vit().eval()
    x = torch.randn(12, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    quantizer = LowBitQuantizer(plan=BitsPlan(BitSetting(8, 8)), quantize_attention=True)
    gm = convert(model, quantizer, x[:4], [x[:6], x[6:]])
    matmuls = [n for n in gm.graph.nodes if n.target in MATMULS]
    assert len(matmuls) == 2 * 12 and all(is_dq(a) for n in matmuls for a in n.args[:2])
    found = layers(gm)
    assert len(found) == 12 * 4 + 2  # qkv, proj, fc1, fc2 per block + patch_embed + head
    for node in found.values():
        codes, _, lo, hi = weight_grid(gm, node)
        assert (lo, hi) == (-127, 127) and int(codes.abs().max()) <= 127
    with torch.no_grad():
        assert sqnr_db(ref, gm(x)) > 25  # measured: 30.1 dB


def test_a_saved_low_bit_graph_reloads_to_the_same_function(setup, runs, tmp_path):
    from vitquant.quant.artifacts import load_pt2e, save_pt2e

    x = setup[3]
    cfg = LowBitPTQ(
        quantize_attention=True, softmax="log2-sqrt2", gelu="twin", quantize_layernorm=True
    )
    qm = runs(cfg)  # the log2 / twin fake-quant modules are traced into the re-export
    path = save_pt2e(qm.module, qm.example, tmp_path / "lowbit.pt2")
    with torch.no_grad():
        assert torch.equal(load_pt2e(path)(x), qm(x))
