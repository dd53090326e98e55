"""Simulated low-bit post-training quantization (W8A8 with attention, W6A6, W4A4, per-layer
bits) on torchao's pt2e flow.

- ``bits``: bit widths per layer (``BitSetting``, ``BitsPlan``, ``'GLOB=W/A'`` rules);
- ``numerics``: the quantizers as pure tensor functions (uniform affine, log2, twin uniform);
- ``observers``: pt2e observers built on those numerics, and the fake-quant modules that the
  non-uniform ones become at conversion;
- ``quantizer``: ``LowBitQuantizer``, what is quantized at which width;
- ``ptq``: the ``LowBitPTQ`` recipe and ``quantize_lowbit``.
"""

from vitquant.quant.lowbit.bits import BitSetting, BitsPlan, parse_bits_rule
from vitquant.quant.lowbit.numerics import (
    activation_range,
    affine_qparams,
    fake_quant_affine,
    log2_codes,
    log2_quant,
    twin_uniform_params,
    twin_uniform_quant,
    weight_range,
)
from vitquant.quant.lowbit.observers import (
    FixedScaleWeightObserver,
    Log2FakeQuant,
    Log2SoftmaxObserver,
    LowBitPerChannelObserver,
    TwinUniformFakeQuant,
    TwinUniformObserver,
    UniformObserver,
    UniformPercentileObserver,
)
from vitquant.quant.lowbit.ptq import LowBitPTQ, bits_label, quantize_lowbit
from vitquant.quant.lowbit.quantizer import LowBitQuantizer

__all__ = [
    "BitSetting",
    "BitsPlan",
    "FixedScaleWeightObserver",
    "Log2FakeQuant",
    "Log2SoftmaxObserver",
    "LowBitPTQ",
    "LowBitPerChannelObserver",
    "LowBitQuantizer",
    "TwinUniformFakeQuant",
    "TwinUniformObserver",
    "UniformObserver",
    "UniformPercentileObserver",
    "activation_range",
    "affine_qparams",
    "bits_label",
    "fake_quant_affine",
    "log2_codes",
    "log2_quant",
    "parse_bits_rule",
    "quantize_lowbit",
    "twin_uniform_params",
    "twin_uniform_quant",
    "weight_range",
]
