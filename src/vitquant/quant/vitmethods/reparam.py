"""RepQ-ViT's post-LayerNorm reparameterization: per-channel activation ranges folded into weights.

After a LayerNorm the channels of a ViT have very different ranges (a few channels span 10-100x
the others), which a per-tensor activation quantizer handles badly: one scale must cover the
widest channel, so the narrow ones get a handful of levels. RepQ-ViT (Li et al., ICCV 2023)
measures each channel's range ``[m_c, M_c]`` on calibration data and rewrites the LayerNorm so
that every channel lands on one common range, compensating exactly in the Linear(s) reading it.

With ``w_c = M_c - m_c`` and ``w_bar = mean(w)``:

- scale ``r_c = w_c / w_bar`` and shift ``delta_c = m_c - r_c * m_star``, where
  ``m_star = mean(m_c / r_c)``; then channel ``c`` maps ``y -> (y - delta_c) / r_c`` onto
  ``[m_star, m_star + w_bar]``, the same range for every channel;
- the LayerNorm's affine absorbs the map: ``gamma' = gamma / r``, ``beta' = (beta - delta) / r``;
- each reader undoes it (``y = r * y' + delta``): ``W' = W diag(r)``, ``b' = b + W delta``.

With ``bits`` the map follows RepQ-ViT's quantizer form instead: per-channel asymmetric grids
``s_c = w_c / (2^bits - 1)``, ``z_c = round(-m_c / s_c)`` are mapped onto the common grid
``s~ = mean(s)``, ``z~ = round(mean(z))`` by ``r_c = s_c / s~`` and ``delta_c = s_c (z~ - z_c)``,
so every per-channel grid point lands exactly on a point of one per-tensor grid.

A channel whose width is (near) zero keeps ``r_c = 1`` and is shifted onto the common minimum.
The model's function is unchanged up to float rounding; only what the quantizer sees changes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.vitmethods.fold import absorb_input_affine, ln_affine, set_ln_affine
from vitquant.quant.vitmethods.layout import vit_layout
from vitquant.quant.vitmethods.stats import channel_ranges

# channels narrower than this fraction of the mean width count as constant
FLAT = 1e-9


def reparam_factors(
    lo: torch.Tensor, hi: torch.Tensor, *, bits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale ``r`` and shift ``delta`` that map every ``[lo_c, hi_c]`` onto one range.

    Args:
        lo: per-channel minimum, (C,).
        hi: per-channel maximum, (C,).
        bits: None for the exact continuous map; an integer for RepQ-ViT's rounded zero points
            on a ``2^bits - 1`` level asymmetric grid.

    Returns:
        ``(r, delta)`` in float64, (C,) each; the new channel value is ``(y - delta) / r``.
    """
    lo, hi = lo.double(), hi.double()  # (C,)
    width = hi - lo  # (C,)
    live = width > FLAT * width.mean().clamp_min(torch.finfo(torch.float64).tiny)
    if not live.any():
        raise VitquantError(
            "every channel of this LayerNorm output is constant on the calibration data; "
            "calibrate on real images (more than one distinct input)."
        )
    r = torch.ones_like(width)
    if bits is None:
        r[live] = width[live] / width[live].mean()
        m_star = (lo[live] / r[live]).mean()
    else:
        levels = 2**bits - 1
        s = width / levels  # (C,) per-channel step
        z = torch.zeros_like(width)
        z[live] = torch.round(-lo[live] / s[live])
        s_common, z_common = s[live].mean(), torch.round(z[live].mean())
        r[live] = s[live] / s_common
        m_star = -s_common * z_common
    delta = lo - r * m_star  # (C,): channel minimum lands on m_star (continuous case)
    if bits is not None:
        delta[live] = s[live] * (z_common - z[live])  # grid point q of channel c -> s~(q - z~)
    return r, delta


def _ratio(width: torch.Tensor) -> float | None:
    """max/min of the positive widths (None when no channel has a positive width)."""
    pos = width[width > 0]
    return float(pos.max() / pos.min()) if len(pos) else None


def reparam_pair(
    norm: nn.LayerNorm,
    readers: Iterable[nn.Linear],
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    bits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the map of ``reparam_factors(lo, hi)`` into ``norm`` and the Linears reading it.

    ``gamma' = gamma / r``, ``beta' = (beta - delta) / r``; each reader ``W' = W diag(r)``,
    ``b' = b + W delta``.

    Args:
        norm: the LayerNorm (C channels), edited in place.
        readers: the Linears that read its output, edited in place.
        lo: measured per-channel minimum of its output, (C,).
        hi: measured per-channel maximum, (C,).
        bits: see ``reparam_factors``.

    Returns:
        ``(r, delta)``, float64 (C,) each.
    """
    r, delta = reparam_factors(lo, hi, bits=bits)  # (C,), (C,)
    gamma, beta = ln_affine(norm)
    set_ln_affine(norm, gamma / r, (beta - delta) / r)
    for reader in readers:
        absorb_input_affine(reader, r, delta)
    return r, delta


def ln_reparam(model: nn.Module, batches: Iterable, *, bits: int | None = None) -> dict:
    """Reparameterize every LayerNorm -> Linear pair of a DeiT-style ViT in place (RepQ-ViT).

    Covers ``norm1 -> attn.qkv``, ``norm2 -> mlp.fc1`` and the final norm -> ``head`` when the
    head reads pooled tokens through ``token``/``avg`` pooling (both commute with the per-channel
    map). Call it on a copy (``copy.deepcopy``) when the original must stay as it was.

    Args:
        model: a timm ``VisionTransformer`` (float, modified in place).
        batches: re-iterable ``(images, labels)`` calibration batches.
        bits: see ``reparam_factors`` (None: the exact continuous map).

    Returns:
        ``{"method", "bits", "layers": {ln_name: {"readers", "width_ratio_before",
        "width_ratio_after", "range_after"}}}``: max/min channel width of the LayerNorm output
        on the calibration data, before, and after as the fold maps the measured ranges.

    Raises:
        VitquantError: not a DeiT-style ViT, a bad ``bits``, empty batches.
    """
    if bits is not None and (not isinstance(bits, int) or isinstance(bits, bool) or bits < 2):
        raise VitquantError(f"ln_reparam: bits must be an integer >= 2 or None (got {bits!r}).")
    layout = vit_layout(model)
    ranges = channel_ranges(model, batches, [p.name for p in layout.pairs])
    layers = {}
    for pair in layout.pairs:
        rng = ranges[pair.name]
        readers = [reader for _, reader in pair.readers]
        r, delta = reparam_pair(pair.norm, readers, rng.min, rng.max, bits=bits)  # (C,) each
        lo_after = (rng.min.double() - delta) / r  # (C,)
        hi_after = (rng.max.double() - delta) / r
        layers[pair.name] = {
            "readers": [name for name, _ in pair.readers],
            "width_ratio_before": _ratio(rng.width.double()),
            "width_ratio_after": _ratio(hi_after - lo_after),
            "range_after": [float(lo_after.min()), float(hi_after.max())],
        }
    return {"method": "ln-reparam", "bits": bits, "layers": layers}
