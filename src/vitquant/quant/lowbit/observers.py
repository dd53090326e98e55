"""pt2e observers for low-bit simulation: uniform grids from ``numerics``, and two non-uniform
quantizers (log2 for softmax probabilities, twin uniform for GELU outputs) that convert into
frozen fake-quant modules.

torchao's ``convert_pt2e`` turns an observer into ``quantize -> dequantize`` ops, unless the
observer has a ``convert(model, observer_node)`` method, which it then calls instead. The
non-uniform observers use that hook to put a ``Log2FakeQuant`` / ``TwinUniformFakeQuant`` module
under the observer's name, so the converted graph calls it where the observer was. Their
parameters are plain Python numbers, not buffers: ``drop_unused_attributes`` keeps only what
``get_attr`` nodes read, and a re-export bakes numbers in as constants.
"""

from __future__ import annotations

import torch
from torch import nn
from torchao.quantization.pt2e.observer import (
    MinMaxObserver,
    ObserverBase,
    PerChannelMinMaxObserver,
)

from vitquant.errors import VitquantError
from vitquant.quant.lowbit.bits import check_bits
from vitquant.quant.lowbit.numerics import (
    affine_qparams,
    log2_quant,
    twin_uniform_params,
    twin_uniform_quant,
    weight_range,
)
from vitquant.quant.observers import MAX_SAMPLE, PercentileObserver

GRID_TOLERANCE = 1e-3  # |w / s - round(w / s)| allowed for weights said to be on the grid
_SPEC_KEYS = ("dtype", "quant_min", "quant_max", "qscheme", "is_dynamic", "ch_axis", "eps")


class _NumericsQParams:
    """Mixin: scale and zero point from ``numerics.affine_qparams`` (the bit width is read off
    the observer's code range: ``2^b`` codes asymmetric, ``2^b - 1`` symmetric restricted)."""

    def _calculate_qparams(self, min_val: torch.Tensor, max_val: torch.Tensor):
        if min_val.numel() == 0 or bool(torch.isinf(min_val).any()):  # never observed
            return torch.tensor([1.0]), torch.tensor([0])
        symmetric = self.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
        bits = (self.quant_max - self.quant_min).bit_length()  # levels - 1 = 2^b - 1 or 2^b - 2
        scale, zero_point, qmin, qmax = affine_qparams(
            min_val, max_val, bits, symmetric=symmetric, eps=float(self.eps)
        )
        if (qmin, qmax) != (self.quant_min, self.quant_max):
            raise VitquantError(
                f"observer range {self.quant_min}..{self.quant_max} is not a {bits}-bit "
                f"{'symmetric' if symmetric else 'asymmetric'} grid ({qmin}..{qmax})."
            )
        return scale.reshape(-1), zero_point.reshape(-1)  # per tensor: shape (1,), as torch


class UniformObserver(_NumericsQParams, MinMaxObserver):
    """Running min/max; asymmetric ``b``-bit activation grid from ``affine_qparams``."""


class UniformPercentileObserver(_NumericsQParams, PercentileObserver):
    """Mean per-batch percentiles (``PercentileObserver``); grid from ``affine_qparams``."""


class LowBitPerChannelObserver(_NumericsQParams, PerChannelMinMaxObserver):
    """Per-output-channel min/max; symmetric restricted ``b``-bit weight grid.

    (torchao passes ``ch_axis`` only to observer classes with ``PerChannel`` in their name.)
    """


class FixedScaleWeightObserver(PerChannelMinMaxObserver):
    """Per-channel symmetric weight observer whose scales are given, not observed.

    For layers whose weights were already rounded (by GPTQ) onto the grid ``scales[c] * q`` with
    integer ``|q| <= 2^(b-1) - 1``: ``calculate_qparams`` returns exactly ``scales`` (zero points
    0), so conversion stores the same codes. A weight off that grid is an error, since
    re-rounding it would silently undo the rounding that chose those codes.

    Args:
        scales: one scale per output channel (dim 0 of the weight), shape ``(C,)``.
        bits: weight bits.
        name: the layer, for error messages.
    """

    def __init__(self, scales: torch.Tensor, bits: int, *, name: str = "", **kwargs) -> None:
        for key in _SPEC_KEYS:  # the spec's copies; the grid is defined by ``bits`` here
            kwargs.pop(key, None)
        qmin, qmax = weight_range(bits)
        super().__init__(
            ch_axis=0,
            dtype=torch.int8,
            qscheme=torch.per_channel_symmetric,
            quant_min=qmin,
            quant_max=qmax,
            **kwargs,
        )
        scales = torch.as_tensor(scales, dtype=torch.float32).detach().flatten()
        if scales.numel() == 0 or not bool((scales > 0).all()):
            raise VitquantError(f"weight scales of {name or 'a layer'} must all be > 0.")
        self.bits, self.name = bits, name
        self.register_buffer("scales", scales.clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.shape[0] != self.scales.numel():
            raise VitquantError(
                f"{self.name or 'a layer'} has {w.shape[0]} output channels but "
                f"{self.scales.numel()} weight scales were given; pass one scale per channel."
            )
        s = self.scales.reshape(-1, *[1] * (w.ndim - 1))  # (C,) -> (C, 1, ...)
        codes = w.detach().float() / s
        off = float((codes - codes.round()).abs().max())
        top = float(codes.abs().max())
        if off > GRID_TOLERANCE or top > self.quant_max + GRID_TOLERANCE:
            raise VitquantError(
                f"weights of {self.name or 'a layer'} are not on the {self.bits}-bit grid of the "
                f"given scales (max |w/s - round(w/s)| = {off:.3g}, max |w/s| = {top:.3g} > "
                f"{self.quant_max}?); pass the scales the weights were rounded with, or none."
            )
        return super().forward(w)

    def calculate_qparams(self):
        return self.scales.clone(), torch.zeros(self.scales.numel(), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Non-uniform quantizers: observers that convert into fake-quant modules


def _replace_observer(model: torch.fx.GraphModule, node: torch.fx.Node, module: nn.Module):
    """Put ``module`` where the observer called by ``node`` was (the node keeps its target)."""
    owner_name, _, leaf = str(node.target).rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, leaf, module)


class Log2FakeQuant(nn.Module):
    """``numerics.log2_quant`` with fixed ``bits`` and ``base`` (a converted graph's softmax
    quantizer)."""

    def __init__(self, bits: int, base: str) -> None:
        super().__init__()
        self.bits, self.base = check_bits(bits, "softmax bits"), base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log2_quant(x, self.bits, base=self.base)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, base={self.base}"


class TwinUniformFakeQuant(nn.Module):
    """``numerics.twin_uniform_quant`` with fixed steps (a converted graph's GELU quantizer)."""

    def __init__(self, bits: int, delta_neg: float, delta_pos: float) -> None:
        super().__init__()
        self.bits = check_bits(bits, "activation bits")
        self.delta_neg, self.delta_pos = float(delta_neg), float(delta_pos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return twin_uniform_quant(x, self.bits, self.delta_neg, self.delta_pos)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, delta_neg={self.delta_neg:.6g}, delta_pos={self.delta_pos:.6g}"


class Log2SoftmaxObserver(ObserverBase):
    """Marks a softmax output for ``log2_quant``; it needs no statistics (probabilities lie in
    [0, 1] and the grid is fixed), so ``forward`` returns its input untouched."""

    def __init__(self, bits: int = 8, base: str = "sqrt2", **kwargs) -> None:
        super().__init__(dtype=kwargs.get("dtype", torch.uint8))
        self.bits = check_bits(bits, "softmax bits")
        log2_quant(torch.ones(1), self.bits, base=base)  # validates the base
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self, **kwargs):
        """Not an affine grid: (1, 0) placeholders; ``convert`` installs the real quantizer."""
        return torch.tensor([1.0]), torch.tensor([0])

    def convert(self, model: torch.fx.GraphModule, observer_node: torch.fx.Node) -> None:
        _replace_observer(model, observer_node, Log2FakeQuant(self.bits, self.base))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, base={self.base}"


class TwinUniformObserver(ObserverBase):
    """Keeps a uniform random sample (at most ``max_sample`` values) of what it sees, plus the
    exact min and max, and chooses ``twin_uniform_params`` from them at conversion.

    The sample stays uniform over all values seen: merging the kept sample (standing for ``n``
    values) with a new batch of ``m`` keeps ``max_sample * n / (n + m)`` of the old values.
    """

    def __init__(self, bits: int = 8, *, max_sample: int = MAX_SAMPLE, seed: int = 0, **kwargs):
        super().__init__(dtype=kwargs.get("dtype", torch.uint8))
        self.bits = check_bits(bits, "activation bits")
        self.max_sample, self.seed = max_sample, seed
        self.register_buffer("sample", torch.empty(0))
        self.register_buffer("seen", torch.tensor(0, dtype=torch.long))
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def _take(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if x.numel() <= k:
            return x
        # seeded by what was seen so far: deterministic, and no Generator to deep-copy
        generator = torch.Generator().manual_seed(self.seed + int(self.seen))
        return x[torch.randperm(x.numel(), generator=generator)[:k]]

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        x = x_orig.detach().float().flatten()
        if x.numel() == 0:
            return x_orig
        n, m = int(self.seen), x.numel()
        keep_old = min(self.sample.numel(), round(self.max_sample * n / (n + m)))
        keep_new = min(m, self.max_sample - keep_old)
        merged = torch.cat([self._take(self.sample, keep_old), self._take(x, keep_new)])
        self.sample.resize_(merged.shape).copy_(merged)
        self.seen += m
        self.min_val.copy_(torch.minimum(self.min_val, x.min()))
        self.max_val.copy_(torch.maximum(self.max_val, x.max()))
        return x_orig

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "sample" in state_dict:  # the sample's length varies
            self.sample.resize_(state_dict[prefix + "sample"].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def params(self) -> tuple[float, float]:
        """``(delta_neg, delta_pos)`` for the sample and the exact extremes."""
        if int(self.seen) == 0:
            raise VitquantError(
                "a twin-uniform GELU observer saw no data; calibrate before converting."
            )
        extremes = torch.stack([self.min_val, self.max_val])
        return twin_uniform_params(torch.cat([self.sample, extremes]), self.bits)

    def calculate_qparams(self, **kwargs):
        """``(delta_neg, delta_pos)`` as tensors (not an affine scale / zero point)."""
        return tuple(torch.tensor([d]) for d in self.params())

    def convert(self, model: torch.fx.GraphModule, observer_node: torch.fx.Node) -> None:
        _replace_observer(model, observer_node, TwinUniformFakeQuant(self.bits, *self.params()))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, seen={int(self.seen)}, kept={self.sample.numel()}"
