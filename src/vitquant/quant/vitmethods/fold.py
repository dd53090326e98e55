"""Exact weight edits shared by the transforms: read and write a LayerNorm's affine and a Linear's
weight/bias, computed in float64 and written back in the parameter's own dtype.

The one identity every fold here uses: a Linear reading ``u = r * u' + delta`` (per input
channel) computes ``W u + b = (W diag(r)) u' + (b + W delta)``.
"""

from __future__ import annotations

import torch
from torch import nn


def ln_affine(norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gamma, beta)`` of a LayerNorm in float64, (C,) each; ones/zeros where it has none."""
    (c,) = norm.normalized_shape
    w = norm.weight
    gamma = w.detach().double().clone() if w is not None else torch.ones(c, dtype=torch.float64)
    b = norm.bias
    beta = b.detach().double().clone() if b is not None else torch.zeros(c, dtype=torch.float64)
    return gamma, beta


def _put(module: nn.Module, attr: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """Write ``value`` into ``module.attr`` (a Parameter), creating it when it was None."""
    param = getattr(module, attr)
    if param is None:
        setattr(module, attr, nn.Parameter(value.to(like.dtype).to(like.device)))
    else:
        with torch.no_grad():
            param.copy_(value.to(param.dtype))


def set_ln_affine(norm: nn.LayerNorm, gamma: torch.Tensor, beta: torch.Tensor) -> None:
    """Write ``gamma``/``beta`` (C,) into ``norm``, giving it an affine when it had none."""
    like = next(norm.parameters(), torch.empty(0))
    like = like if like.numel() else torch.empty(0, dtype=torch.get_default_dtype())
    _put(norm, "weight", gamma, like)
    _put(norm, "bias", beta, like)
    norm.elementwise_affine = True


def linear_params(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (out, in), b (out,))`` of a Linear in float64; zeros where it has no bias."""
    w = linear.weight.detach().double().clone()
    b = linear.bias
    bias = b.detach().double().clone() if b is not None else torch.zeros(w.shape[0]).double()
    return w, bias


def set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Write ``weight`` (out, in) and ``bias`` (out,) into ``linear``; a bias is created when
    the Linear had none, unless ``bias`` is None."""
    _put(linear, "weight", weight, linear.weight)
    if bias is not None:
        _put(linear, "bias", bias, linear.weight)


def absorb_input_affine(
    linear: nn.Linear, scale: torch.Tensor, shift: torch.Tensor | None = None
) -> None:
    """Make ``linear`` read ``u'`` where it read ``u = scale * u' + shift`` (per input channel).

    ``W' = W diag(scale)``, ``b' = b + W shift``; ``scale``/``shift`` are (in,).
    """
    w, b = linear_params(linear)  # (out, in), (out,)
    if shift is not None:
        b = b + w @ shift.double()  # (out,)
    set_linear(linear, w * scale.double()[None, :], b)


def scale_outputs(linear: nn.Linear, rows: slice, scale: torch.Tensor) -> None:
    """Multiply output channels ``rows`` of ``linear`` (weight rows and bias) by ``scale``."""
    w, b = linear_params(linear)
    w[rows] *= scale.double()[:, None]
    b[rows] *= scale.double()
    set_linear(linear, w, b if linear.bias is not None else None)
