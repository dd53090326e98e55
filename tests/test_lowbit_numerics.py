"""Low-bit numerics, bit rules and observers against hand-computed values and torch's own
quantize/dequantize ops and observer formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torchao.quantization.pt2e  # noqa: F401 - registers torch.ops.quantized_decomposed
from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver

from vitquant.errors import VitquantError
from vitquant.quant.lowbit import (
    BitSetting,
    BitsPlan,
    FixedScaleWeightObserver,
    Log2SoftmaxObserver,
    TwinUniformObserver,
    UniformObserver,
    affine_qparams,
    fake_quant_affine,
    log2_codes,
    log2_quant,
    parse_bits_rule,
    twin_uniform_params,
    twin_uniform_quant,
)

qd = torch.ops.quantized_decomposed


# -- uniform affine -------------------------------------------------------------------------------


def test_affine_4bit_asymmetric_hand_case():
    # range [-1, 2] on codes 0..15: s = 3 / 15 = 0.2, z = 0 - round(-1 / 0.2) = 5
    scale, zp, qmin, qmax = affine_qparams(-1.0, 2.0, 4, symmetric=False)
    assert (qmin, qmax) == (0, 15)
    assert scale.item() == pytest.approx(0.2, rel=1e-7) and zp.item() == 5
    x = torch.tensor([-1.2, -0.05, 0.33, 2.66])
    # -1.2/0.2 = -6 -> code -1 -> clamp 0 -> -1.0; -0.25 -> 0 -> 0.0; 1.65 -> 2 -> 0.4;
    # 13.3 -> 13 + 5 = 18 -> clamp 15 -> 2.0
    out = fake_quant_affine(x, scale, zp, qmin, qmax)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 0.4, 2.0]), atol=1e-6, rtol=0)


def test_affine_range_always_includes_zero():
    scale, zp, _, _ = affine_qparams(0.5, 3.5, 3, symmetric=False)  # widened to [0, 3.5]
    assert scale.item() == pytest.approx(0.5) and zp.item() == 0


def test_symmetric_4bit_per_channel_weight_hand_case():
    w = torch.tensor([[0.7, -0.36, 0.1], [-1.4, 0.2, 0.0]])
    scale, zp, qmin, qmax = affine_qparams(w.amin(1), w.amax(1), 4, symmetric=True)
    assert (qmin, qmax) == (-7, 7)  # restricted range: no -8
    torch.testing.assert_close(scale, torch.tensor([0.1, 0.2]))  # amax / 7
    assert zp.tolist() == [0, 0]
    out = fake_quant_affine(w, scale, zp, qmin, qmax, axis=0)
    # codes [[7, -4, 1], [-7, 1, 0]]
    expected = torch.tensor([[0.7, -0.4, 0.1], [-1.4, 0.2, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_affine_qparams_equal_torch_observers(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(64, 48, generator=g) * 3 + 0.7
    obs = MinMaxObserver(
        dtype=torch.uint8, quant_min=0, quant_max=2**bits - 1, qscheme=torch.per_tensor_affine
    )
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    s, z, _, _ = affine_qparams(x.min(), x.max(), bits, symmetric=False)
    assert torch.equal(s.reshape(1), s_ref) and z.item() == z_ref.item()

    qmax = 2 ** (bits - 1) - 1
    wobs = PerChannelMinMaxObserver(
        dtype=torch.int8, quant_min=-qmax, quant_max=qmax, qscheme=torch.per_channel_symmetric
    )
    wobs(x)
    s_ref, z_ref = wobs.calculate_qparams()
    s, z, _, _ = affine_qparams(x.amin(1), x.amax(1), bits, symmetric=True)
    assert torch.equal(s, s_ref) and torch.equal(z, z_ref.to(torch.int64))


def test_fake_quant_affine_equals_the_decomposed_ops_of_a_converted_graph():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 40, generator=g) * 2
    s, z, qmin, qmax = affine_qparams(x.min(), x.max(), 5, symmetric=False)
    q = qd.quantize_per_tensor(x, float(s), int(z), qmin, qmax, torch.uint8)
    ref = qd.dequantize_per_tensor(q, float(s), int(z), qmin, qmax, torch.uint8)
    assert torch.equal(fake_quant_affine(x, s, z, qmin, qmax), ref)

    s, z, qmin, qmax = affine_qparams(x.amin(1), x.amax(1), 3, symmetric=True)
    q = qd.quantize_per_channel(x, s, z, 0, qmin, qmax, torch.int8)
    ref = qd.dequantize_per_channel(q, s, z, 0, qmin, qmax, torch.int8)
    assert torch.equal(fake_quant_affine(x, s, z, qmin, qmax, axis=0), ref)


# -- log2 -----------------------------------------------------------------------------------------


def test_log2_base2_at_3_bits_by_hand():
    # -log2: 0, 1, 1.74 -> 2, 5.97 -> 6, 6.51 -> 7 (= 2^3 - 1, the zero code), 9.97, (0)
    x = torch.tensor([1.0, 0.5, 0.3, 0.016, 0.011, 0.001, 0.0])
    assert log2_codes(x, 3, base="2").tolist() == [0, 1, 2, 6, 7, 7, 7]
    expected = torch.tensor([1.0, 0.5, 0.25, 2**-6, 0.0, 0.0, 0.0])
    assert torch.equal(log2_quant(x, 3, base="2"), expected)


def test_log2_sqrt2_at_3_bits_by_hand():
    # -log_sqrt2 = -2 log2: 0, 2, 3.47 -> 3, 19.9 -> top code (0)
    x = torch.tensor([1.0, 0.5, 0.3, 0.001])
    assert log2_codes(x, 3, base="sqrt2").tolist() == [0, 2, 3, 7]
    expected = torch.tensor([1.0, 0.5, 2**-1.5, 0.0])
    torch.testing.assert_close(log2_quant(x, 3, base="sqrt2"), expected, atol=0, rtol=1e-7)


@pytest.mark.parametrize("bits", [3, 4])
def test_log2_has_exactly_2_pow_bits_levels(bits):
    x = torch.linspace(0, 1, 100_001)
    levels = torch.unique(log2_quant(x, bits, base="sqrt2"))
    assert len(levels) == 2**bits  # 0 and sqrt2^-k for k = 0 .. 2^b - 2
    expected = sorted([0.0] + [2 ** (-k / 2) for k in range(2**bits - 1)])
    torch.testing.assert_close(levels, torch.tensor(expected), atol=0, rtol=1e-6)


def test_log2_rejects_an_unknown_base():
    with pytest.raises(VitquantError, match="choose one of 2, sqrt2"):
        log2_quant(torch.ones(2), 4, base="e")


# -- twin uniform ---------------------------------------------------------------------------------


def test_twin_uniform_quant_by_hand():
    x = torch.tensor([-0.5, -0.1, -0.011, 0.0, 0.26, 1.2, 10.0])
    # negatives: step 0.02, codes -8..0 (-0.5 -> -8 -> -0.16); non-negatives: step 0.5, 0..7
    out = twin_uniform_quant(x, 4, 0.02, 0.5)
    expected = torch.tensor([-0.16, -0.1, -0.02, 0.0, 0.5, 1.0, 3.5])
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


def test_twin_uniform_params_by_hand():
    sample = torch.tensor([-0.17, 0.0, 0.5, 1.0, 3.0])
    # delta_neg = 0.17 / 8 = 0.02125; targets r * 3 / 7 give k in {3, 4, 5}; squared errors on
    # (0.5, 1, 3): k=3 (0.17): 3.2766, k=4 (0.34): 0.4104, k=5 (0.68): 0.2132 -> k = 5
    dn, dp = twin_uniform_params(sample, 4)
    assert dn == pytest.approx(0.02125) and dp == pytest.approx(0.68)
    assert math.log2(dp / dn) == pytest.approx(5)


def test_twin_uniform_params_cover_gelu_minimum_and_wider_negatives():
    dn, dp = twin_uniform_params(torch.tensor([-0.01, 0.2]), 8)
    assert dn == pytest.approx(0.17 / 128)  # at least GELU's minimum
    dn, _ = twin_uniform_params(torch.tensor([-0.5, 0.2]), 4)
    assert dn == pytest.approx(0.5 / 8)
    assert twin_uniform_params(torch.tensor([-0.1, -0.05]), 4) == (0.17 / 8, 0.17 / 8)


# -- bits and rules -------------------------------------------------------------------------------


def test_bit_setting_validates_the_width():
    assert str(BitSetting(4, 6)) == "W4A6"
    with pytest.raises(VitquantError, match="from 2 to 8"):
        BitSetting(9, 8)
    with pytest.raises(VitquantError, match="activation bits"):
        BitSetting(8, 1)


def test_parse_bits_rule():
    assert parse_bits_rule("blocks.0.*=8/6") == ("blocks.0.*", BitSetting(8, 6))
    assert parse_bits_rule(" *.fc2 = 4 / 8 ") == ("*.fc2", BitSetting(4, 8))
    for bad in ("blocks.0.*:8/8", "blocks.0.*=8", "=8/8", "head=8/x", ""):
        with pytest.raises(VitquantError, match=r"expected GLOB=W/A, e.g. 'blocks.0.\*=8/8'"):
            parse_bits_rule(bad)
    with pytest.raises(VitquantError, match="head=9/8.*from 2 to 8"):
        parse_bits_rule("head=9/8")


def test_bits_plan_last_matching_rule_wins():
    plan = BitsPlan(
        BitSetting(4, 4), (("blocks.*", BitSetting(6, 6)), ("blocks.0.*", BitSetting(8, 8)))
    )
    assert plan.for_module("blocks.0.attn.qkv") == BitSetting(8, 8)
    assert plan.for_module("blocks.1.mlp.fc1") == BitSetting(6, 6)
    assert plan.for_module("head") == BitSetting(4, 4)
    reverse = BitsPlan(BitSetting(4, 4), plan.rules[::-1])
    assert reverse.for_module("blocks.0.attn.qkv") == BitSetting(6, 6)


def test_bits_plan_check_names_the_closest_modules():
    names = ["blocks.0.attn.qkv", "blocks.0.attn.proj", "head"]
    BitsPlan.from_texts(BitSetting(), ["blocks.0.*=8/8", "head=8/8"]).check(names)
    plan = BitsPlan.from_texts(BitSetting(), ["head=8/8", "blocks.0.atn.qkv=8/8"])
    with pytest.raises(VitquantError, match=r"blocks.0.atn.qkv=8/8' matches no module.*qkv"):
        plan.check(names)


# -- observers ------------------------------------------------------------------------------------


def test_uniform_observer_qparams_come_from_affine_qparams():
    obs = UniformObserver(
        dtype=torch.uint8, quant_min=0, quant_max=15, qscheme=torch.per_tensor_affine
    )
    x = torch.tensor([-1.0, 0.3, 2.0])
    obs(x)
    scale, zp = obs.calculate_qparams()
    s, z, _, _ = affine_qparams(-1.0, 2.0, 4, symmetric=False)
    assert torch.equal(scale, s.reshape(1)) and torch.equal(zp, z.reshape(1))


def test_twin_uniform_observer_keeps_a_bounded_sample():
    g = torch.Generator().manual_seed(0)
    batches = [torch.nn.functional.gelu(torch.randn(600, generator=g) * 2) for _ in range(5)]
    obs = TwinUniformObserver(bits=4, max_sample=1000)
    for b in batches:
        obs(b)
        assert obs.sample.numel() <= 1000
    every = torch.cat(batches)
    assert int(obs.seen) == 3000 and obs.sample.numel() == 1000
    assert obs.min_val.item() == every.min().item() and obs.max_val.item() == every.max().item()
    full = TwinUniformObserver(bits=4)  # large enough to keep everything: exact params
    for b in batches:
        full(b)
    assert full.params() == twin_uniform_params(every, 4)


def test_log2_observer_passes_values_through():
    obs = Log2SoftmaxObserver(bits=4, base="2")
    x = torch.rand(3, 5)
    assert obs(x) is x
    with pytest.raises(VitquantError, match="base"):
        Log2SoftmaxObserver(bits=4, base="3")


def test_fixed_scale_weight_observer_reproduces_the_given_scales():
    scales = torch.tensor([0.013, 0.5, 0.0721])
    codes = torch.tensor([[7, -3, 0, 1], [-7, 7, 2, 0], [5, 6, -1, -7]], dtype=torch.float32)
    obs = FixedScaleWeightObserver(scales, 4, name="fc")
    obs(codes * scales[:, None])
    s, z = obs.calculate_qparams()
    assert torch.equal(s, scales) and torch.equal(z, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(VitquantError, match="not on the 4-bit grid"):
        obs((codes + 0.3) * scales[:, None])
    with pytest.raises(VitquantError, match="not on the 4-bit grid"):
        obs(codes * 2 * scales[:, None])  # |code| 14 > 7
    with pytest.raises(VitquantError, match="3 weight scales"):
        obs(torch.zeros(4, 4))
