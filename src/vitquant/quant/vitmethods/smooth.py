"""SmoothQuant: move activation outliers into the weights with exact per-channel scales.

A Linear computes ``X W^T``; for any positive per-input-channel ``s``,
``X W^T = (X diag(s)^-1) (W diag(s))^T``. SmoothQuant (Xiao et al., ICML 2023) picks

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(``max|W_j|`` over input column ``j`` of every Linear reading ``X``), so the activation's
channels shrink where they are large and the weight columns grow to match; ``alpha = 0.5``
equalises both: ``max|X_j / s_j| = max|W_j s_j| = sqrt(max|X_j| max|W_j|)``.

In a ViT the division by ``s`` is free where ``X`` comes out of something per-channel affine:

- LayerNorm -> Linear(s): ``gamma' = gamma / s``, ``beta' = beta / s``, readers ``W' = W diag(s)``
  (``norm1 -> attn.qkv`` (+ ``attn.gate``), ``norm2 -> mlp.fc1``, final norm -> ``head``);
- the attention value path: ``attn.proj`` reads ``softmax(q k^T) v`` per head, and attention
  mixes tokens, never channels, so scaling channel ``j`` of ``v`` (row ``2 * attn_dim + j`` of
  ``qkv``, weight and bias) by ``1 / s_j`` scales channel ``j`` of ``proj``'s input by the same,
  and ``proj``'s column ``j`` takes ``s_j``. Skipped where ``attn.norm`` (scale_attn_norm) sits
  between the two.

Both ``max|X_j|`` and ``max|W_j|`` are clamped at ``1e-5`` (as the paper's code does) so a dead
channel gives a finite scale. All statistics are measured once before any fold: every fold is
exact, so later layers see the same activations either way. The value paths go first, so the
``norm1`` scales see the ``qkv`` weight as it will be quantized (its v rows already divided).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.vitmethods.fold import (
    absorb_input_affine,
    ln_affine,
    scale_outputs,
    set_ln_affine,
)
from vitquant.quant.vitmethods.layout import vit_layout
from vitquant.quant.vitmethods.stats import channel_ranges

CLAMP = 1e-5


def smooth_scales(
    act_absmax: torch.Tensor, weight_absmax: torch.Tensor, *, alpha: float = 0.5
) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (float64), both maxima clamped at 1e-5.

    Args:
        act_absmax: per-channel abs-max of the activation, (C,).
        weight_absmax: per-input-column abs-max of the weight(s) reading it, (C,).
        alpha: migration strength in [0, 1].
    """
    x = act_absmax.double().clamp_min(CLAMP)  # (C,)
    w = weight_absmax.double().clamp_min(CLAMP)  # (C,)
    return x.pow(alpha) / w.pow(1 - alpha)


def _column_absmax(linears: Iterable[nn.Linear]) -> torch.Tensor:
    """Abs-max of each input column over the stacked weights of ``linears``, (in,)."""
    w = torch.cat([lin.weight.detach().double() for lin in linears], dim=0)  # (sum out, in)
    return w.abs().amax(dim=0)


def _ratio(absmax: torch.Tensor) -> float:
    """max/median of per-channel abs-max: how far the outlier channels stand out."""
    return float(absmax.max() / absmax.median().clamp_min(torch.finfo(torch.float64).tiny))


def smoothquant(model: nn.Module, batches: Iterable, *, alpha: float = 0.5) -> dict:
    """Apply SmoothQuant's scales to every LayerNorm -> Linear pair and value path, in place.

    Call it on a copy (``copy.deepcopy``) when the original must stay as it was.

    Args:
        model: a timm ``VisionTransformer`` (float, modified in place).
        batches: re-iterable ``(images, labels)`` calibration batches.
        alpha: migration strength in [0, 1] (0: nothing moves; 1: all range into the weights).

    Returns:
        ``{"method", "alpha", "layers": {name: {"readers", "act_ratio_before",
        "act_ratio_after", "weight_ratio_before", "weight_ratio_after", "scale_min",
        "scale_max"}}}``; a ratio is max/median of the per-channel abs-max, of the activation
        (as the fold maps the measured ranges) and of the readers' weight columns. ``name`` is
        the LayerNorm, or ``blocks.N.attn.v`` for a value path.

    Raises:
        VitquantError: not a DeiT-style ViT, ``alpha`` outside [0, 1], empty batches.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise VitquantError(f"smoothquant: alpha must be a number in [0, 1] (got {alpha!r}).")
    layout = vit_layout(model)
    values = [b for b in layout.blocks if isinstance(b.attn.norm, nn.Identity)]
    names = [p.name for p in layout.pairs] + [f"{b.name}.attn.proj" for b in values]
    ranges = channel_ranges(model, batches, names)

    layers = {}

    def record(name, readers, act, w_before, w_after, s):
        layers[name] = {
            "readers": readers,
            "act_ratio_before": _ratio(act.double()),
            "act_ratio_after": _ratio(act.double() / s),
            "weight_ratio_before": _ratio(w_before),
            "weight_ratio_after": _ratio(w_after),
            "scale_min": float(s.min()),
            "scale_max": float(s.max()),
        }

    for b in values:
        dim_v = b.proj.in_features  # attn_dim = heads * head_dim
        act = ranges[f"{b.name}.attn.proj"].absmax  # (attn_dim,)
        w_before = _column_absmax([b.proj])
        s = smooth_scales(act, w_before, alpha=alpha)  # (attn_dim,)
        scale_outputs(b.qkv, slice(2 * dim_v, 3 * dim_v), 1 / s)  # v channels / s
        absorb_input_affine(b.proj, s)
        record(f"{b.name}.attn.v", [f"{b.name}.attn.proj"], act, w_before, w_before * s, s)
    for pair in layout.pairs:
        linears = [lin for _, lin in pair.readers]
        act = ranges[pair.name].absmax  # (C,)
        w_before = _column_absmax(linears)  # (C,)
        s = smooth_scales(act, w_before, alpha=alpha)  # (C,)
        gamma, beta = ln_affine(pair.norm)
        set_ln_affine(pair.norm, gamma / s, beta / s)
        for lin in linears:
            absorb_input_affine(lin, s)
        record(pair.name, [n for n, _ in pair.readers], act, w_before, w_before * s, s)

    return {"method": "smoothquant", "alpha": float(alpha), "layers": layers}
