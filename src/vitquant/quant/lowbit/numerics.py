"""The numerics of simulated low-bit quantization: pure tensor functions, one source of truth.

Three quantizers, each a map from float values to a small set of levels (``2^b`` of them for
``b`` bits):

- **uniform affine** (``affine_qparams`` + ``fake_quant_affine``): ``q = clamp(round(x / s) + z,
  qmin, qmax)``, ``x_hat = (q - z) * s``. Activations are asymmetric with unsigned codes
  ``0..2^b-1`` (uint8 storage, as torchao's x86 recipe), their range widened to include 0 so
  that 0 is exact. Weights are symmetric per output channel on the *restricted* range
  ``-(2^(b-1)-1)..2^(b-1)-1`` with ``s = amax / qmax`` and ``z = 0``; this grid is a contract:
  GPTQ weights rounded elsewhere land on it, and ``FixedScaleWeightObserver`` keeps their scales.
  The formulas are torch's observer formulas (``UniformQuantizationObserverBase``), and the
  rounding multiplies by ``1 / s`` as ``quantized_decomposed.quantize_per_*`` do, so a
  converted pt2e graph computes exactly what these functions compute.
- **log2** (``log2_quant``) for softmax probabilities in [0, 1], after RepQ-ViT: the code is
  ``q = round(-log_base(x))`` and ``x_hat = base^-q``, so small probabilities keep a relative
  precision that a uniform grid of step ``1 / (2^b - 1)`` flushes to zero. Codes ``0..2^b-2``
  are powers of the base; the top code ``2^b-1`` is reserved for 0, so ``x`` with ``q >= 2^b-1``
  (including ``x <= 0``) becomes exactly 0 and the grid has exactly ``2^b`` levels.
- **twin uniform** (``twin_uniform_quant``) for post-GELU activations, after PTQ4ViT: GELU's
  output lies in ``[-0.17, +inf)``, a tiny negative lobe and a long positive tail, which one
  uniform grid serves badly. Negatives use a fine step ``delta_neg`` on codes
  ``-2^(b-1)..0``, non-negatives a coarse ``delta_pos`` on ``0..2^(b-1)-1``, with
  ``delta_pos = delta_neg * 2^k`` so that hardware aligns the two ranges with a shift.
"""

from __future__ import annotations

import math

import torch

from vitquant.errors import VitquantError
from vitquant.quant.lowbit.bits import check_bits

EPS = torch.finfo(torch.float32).eps  # smallest scale, as torch's observers
GELU_MIN = -0.17  # min of x * Phi(x) is -0.16997 at x = -0.7518; the negative grid covers it
LOG2_BASES = {"2": 1.0, "sqrt2": 0.5}  # base -> log2(base)
TWIN_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # clipping ratios of max tried for delta_pos


def weight_range(bits: int) -> tuple[int, int]:
    """``(qmin, qmax)`` of symmetric weights: the restricted range ``+-(2^(b-1)-1)``."""
    check_bits(bits, "weight bits")
    qmax = 2 ** (bits - 1) - 1
    return -qmax, qmax


def activation_range(bits: int) -> tuple[int, int]:
    """``(qmin, qmax)`` of asymmetric activations: unsigned codes ``0..2^b-1``."""
    check_bits(bits, "activation bits")
    return 0, 2**bits - 1


def affine_qparams(
    lo: torch.Tensor | float,
    hi: torch.Tensor | float,
    bits: int,
    *,
    symmetric: bool,
    eps: float = EPS,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale and zero point of a uniform grid covering ``[lo, hi]`` (per element of lo/hi).

    Args:
        lo, hi: observed minimum and maximum (scalars, or one per channel).
        bits: bit width.
        symmetric: weights (restricted signed range, zero point 0, ``s = max(|lo|, |hi|) /
            qmax``); else activations (unsigned codes, range widened to include 0).
        eps: smallest scale (a constant tensor would otherwise give ``s = 0``).

    Returns:
        ``(scale, zero_point, qmin, qmax)``: float32 and int64 tensors shaped like ``lo``.
    """
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    lo_neg = torch.minimum(lo, torch.zeros_like(lo))  # the range must include 0
    hi_pos = torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        qmin, qmax = weight_range(bits)
        amax = torch.maximum(-lo_neg, hi_pos)
        scale = torch.clamp(amax / float(qmax), min=eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        qmin, qmax = activation_range(bits)
        scale = torch.clamp((hi_pos - lo_neg) / float(qmax - qmin), min=eps)
        zero_point = qmin - torch.round(lo_neg / scale).to(torch.int64)
        zero_point = torch.clamp(zero_point, qmin, qmax)
    return scale, zero_point, qmin, qmax


def fake_quant_affine(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
    *,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize ``x`` onto the grid ``(scale, zero_point, qmin, qmax)`` and back to float.

    Args:
        x: any shape.
        scale, zero_point: one value (per tensor), or one per slice of ``x`` along ``axis``.
        qmin, qmax: the code range.
        axis: the channel dimension of per-channel parameters (None: per tensor).
    """
    if axis is None:
        # per tensor: a Python reciprocal, as quantize_per_tensor computes it
        inv, zp, s = 1.0 / float(scale), int(zero_point), float(scale)
    else:
        shape = [1] * x.ndim
        shape[axis] = -1  # (C,) -> broadcastable along axis, e.g. (C, 1) for (C, K) weights
        s = torch.as_tensor(scale, dtype=torch.float32).reshape(shape)
        zp = torch.as_tensor(zero_point).reshape(shape)
        inv = 1.0 / s
    q = torch.clamp(torch.round(x * inv) + zp, qmin, qmax)
    return (q - zp) * s


def log2_codes(x: torch.Tensor, bits: int, *, base: str = "sqrt2") -> torch.Tensor:
    """Codes of ``log2_quant``: ``round(-log_base(x))`` in ``0..2^b-2``, and ``2^b-1`` for 0.

    ``x > 1`` (not a probability) saturates at code 0, i.e. 1.0; ties round half to even.
    """
    step = _log2_step(base)
    check_bits(bits, "softmax bits")
    top = 2**bits - 1  # reserved for 0
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    q = torch.round(-torch.log2(safe) / step)  # -log_base(x) = -log2(x) / log2(base)
    q = torch.clamp(q, 0, top)
    return torch.where(positive, q, torch.full_like(q, top))


def log2_quant(x: torch.Tensor, bits: int, *, base: str = "sqrt2") -> torch.Tensor:
    """Log-domain quantization of probabilities in [0, 1]: ``base^-q``, or 0 for the top code.

    Args:
        x: post-softmax probabilities, any shape.
        bits: code width; codes ``0..2^b-2`` are ``base^0 .. base^-(2^b-2)``.
        base: ``"2"`` or ``"sqrt2"`` (RepQ-ViT's log-sqrt2: twice as many levels per octave).
    """
    q = log2_codes(x, bits, base=base)
    top = 2**bits - 1
    levels = torch.exp2(-q * _log2_step(base))  # base^-q = 2^(-q * log2(base))
    return torch.where(q < top, levels, torch.zeros_like(levels)).to(x.dtype)


def _log2_step(base: str) -> float:
    if base not in LOG2_BASES:
        raise VitquantError(f"unknown log2 base {base!r}; choose one of {', '.join(LOG2_BASES)}.")
    return LOG2_BASES[base]


def twin_uniform_quant(
    x: torch.Tensor, bits: int, delta_neg: float, delta_pos: float
) -> torch.Tensor:
    """Twin uniform quantization: negatives on ``delta_neg * [-2^(b-1)..0]``, the rest on
    ``delta_pos * [0..2^(b-1)-1]`` (``2^b`` levels in all; the sign picks the grid).

    Args:
        x: post-GELU activations, any shape.
        bits: bit width (one bit chooses the grid).
        delta_neg, delta_pos: the two steps (> 0).
    """
    check_bits(bits, "activation bits")
    if not (delta_neg > 0 and delta_pos > 0):
        raise VitquantError(f"twin uniform steps must be > 0 (got {delta_neg}, {delta_pos}).")
    half = 2 ** (bits - 1)
    neg = torch.clamp(torch.round(x / delta_neg), -half, 0) * delta_neg
    pos = torch.clamp(torch.round(x / delta_pos), 0, half - 1) * delta_pos
    return torch.where(x < 0, neg, pos)


def twin_uniform_params(
    sample: torch.Tensor, bits: int, *, ratios: tuple[float, ...] = TWIN_RATIOS
) -> tuple[float, float]:
    """``(delta_neg, delta_pos)`` of ``twin_uniform_quant`` for the values in ``sample``.

    ``delta_neg = max(-min(sample), 0.17) / 2^(b-1)``: the negative grid reaches the sample's
    minimum and at least GELU's minimum (-0.17). ``delta_pos = delta_neg * 2^k`` with the integer
    ``k`` that minimises the mean squared error on ``sample`` among the powers of two just
    below and above ``r * max(sample) / (2^(b-1) - 1)`` for each clipping ratio ``r`` in
    ``ratios`` (ties: the smaller step).
    """
    check_bits(bits, "activation bits")
    x = sample.detach().float().flatten()
    if x.numel() == 0:
        raise VitquantError("twin uniform parameters need at least one sample value.")
    half = 2 ** (bits - 1)
    delta_neg = max(-min(float(x.min()), 0.0), -GELU_MIN) / half
    hi = float(x.max())
    if hi <= 0:
        return delta_neg, delta_neg
    ks: set[int] = set()
    for r in ratios:
        e = math.log2(r * hi / (half - 1) / delta_neg)
        ks.update((math.floor(e), math.ceil(e)))
    best = None
    for k in sorted(ks):
        delta_pos = delta_neg * 2.0**k
        err = float((twin_uniform_quant(x, bits, delta_neg, delta_pos) - x).pow(2).mean())
        if best is None or err < best[0]:
            best = (err, delta_pos)
    return delta_neg, best[1]
