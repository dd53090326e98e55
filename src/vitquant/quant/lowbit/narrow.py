"""A backend's own pt2e ``QuantizationConfig`` narrowed to fewer bits, for low-bit QAT.

``LowBitQuantizer`` (PTQ) brings its own observers; QAT instead trains through the backend
quantizer's fake-quantize modules (``FusedMovingAvgObsFakeQuantize`` on x86), and the bit
width of those is only their ``quant_min``/``quant_max``: torchao builds each observer or fake
quantizer from its ``QuantizationSpec`` with the spec's range. So narrowing a setting is a
``dataclasses.replace`` of the ranges, to the same grids as the low-bit PTQ
(``numerics.weight_range`` / ``activation_range``):

- weights below 8 bits: symmetric, restricted range ``+-(2^(w-1)-1)``;
- activations below 8 bits: ``0..2^a-1`` (asymmetric uint8 codes) or ``-2^(a-1)..2^(a-1)-1``
  (symmetric int8 codes);
- an 8-bit part keeps the backend's own range, so ``W8A8`` is the backend's int8 config.

Per-layer rules (``BitsPlan``) become ``set_module_name_qconfig`` entries (``bits_overrides``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from vitquant.quant.lowbit.bits import BitSetting, BitsPlan
from vitquant.quant.lowbit.numerics import activation_range, weight_range


def _narrow_activation(spec, bits: int):
    if spec is None or bits >= 8:
        return spec
    if spec.dtype == torch.int8:  # symmetric codes around 0
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = activation_range(bits)
    return dataclasses.replace(spec, quant_min=lo, quant_max=hi)


def narrow_config(config, setting: BitSetting):
    """``config`` with its weight and activation specs at ``setting``'s bit widths.

    ``config`` is a torchao ``QuantizationConfig`` (x86's or XNNPACK's); ``None`` (a module left
    in float) stays ``None``.
    """
    if config is None:
        return None
    weight = config.weight
    if weight is not None and setting.wbits < 8:
        lo, hi = weight_range(setting.wbits)
        weight = dataclasses.replace(weight, quant_min=lo, quant_max=hi)
    return dataclasses.replace(
        config,
        input_activation=_narrow_activation(config.input_activation, setting.abits),
        output_activation=_narrow_activation(config.output_activation, setting.abits),
        weight=weight,
    )


def bits_overrides(
    plan: BitsPlan, layers: Iterable[str], ignore: Iterable[str] = ()
) -> dict[str, BitSetting]:
    """The layers whose setting differs from ``plan.default`` -> that setting.

    Layers inside an ignored module are left out: they stay float, whatever a rule says.
    """
    ignored = tuple(ignore)

    def inside_ignored(name: str) -> bool:
        return any(name == g or name.startswith(g + ".") for g in ignored)

    return {
        name: plan.for_module(name)
        for name in layers
        if plan.for_module(name) != plan.default and not inside_ignored(name)
    }


def is_low_bit(plan: BitsPlan) -> bool:
    """Whether any setting of ``plan`` (its default or a rule) is below 8 bits."""
    settings = [plan.default, *(s for _, s in plan.rules)]
    return any(s.wbits < 8 or s.abits < 8 for s in settings)
