"""ViT-aware methods for low-bit quantization, by name.

``METHODS`` maps a name to a ``Method``: what kind of step it is and one function with a uniform
signature. The transforms here rewrite a float copy of a DeiT-style timm ViT before it is
exported and quantized; each leaves the float model's outputs unchanged (to float rounding) and
changes what the quantizer sees:

- ``ln-reparam`` (``reparam``): RepQ-ViT's post-LayerNorm reparameterization;
- ``smoothquant`` (``smooth``): SmoothQuant's activation -> weight range migration;
- ``rotate`` (``rotate``): QuaRot-style centring, LayerNorm -> RMSNorm and Hadamard rotation.

Shared pieces: ``layout`` (which module writes/reads the residual stream, and the refusal of
other models), ``stats`` (per-channel ranges over calibration batches), ``fold`` (exact weight
edits). Functions take ``(model, batches)``: ``batches`` is a re-iterable of ``(images,
labels)`` CPU tensors (``rotate`` ignores it); they edit ``model`` in place and return a small
JSON-ready report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.vitmethods.reparam import ln_reparam
from vitquant.quant.vitmethods.rotate import OnlineHadamard, hadamard_rotate, rotation_matrix
from vitquant.quant.vitmethods.smooth import smoothquant
from vitquant.quant.vitmethods.stats import ChannelRange, channel_ranges

KINDS = ("transform", "quantizer", "weights")


@dataclass(frozen=True)
class Method:
    """One ViT method.

    Attributes:
        name: registry key, e.g. ``ln-reparam``.
        kind: ``transform`` (float-invariant model rewrite before export), ``quantizer`` (an
            option of the low-bit quantizer) or ``weights`` (changes the quantized weights).
        description: one line for tables and ``--help``.
        fn: ``fn(model, batches) -> dict`` (a report).
    """

    name: str
    kind: str
    description: str
    fn: Callable[[nn.Module, Iterable], dict]


def _rotate(model: nn.Module, batches: Iterable) -> dict:
    return hadamard_rotate(model)


METHODS: dict[str, Method] = {
    "ln-reparam": Method(
        "ln-reparam",
        "transform",
        "RepQ-ViT: per-channel post-LayerNorm ranges folded into the LayerNorm and next Linear",
        ln_reparam,
    ),
    "smoothquant": Method(
        "smoothquant",
        "transform",
        "SmoothQuant (alpha 0.5): activation outliers moved into the weights, LN and v paths",
        smoothquant,
    ),
    "rotate": Method(
        "rotate",
        "transform",
        "QuaRot: centred stream, LayerNorm -> RMSNorm, randomized Hadamard + online before fc2",
        _rotate,
    ),
}


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        VitquantError: an unknown name (the message lists the known ones).
    """
    if name not in METHODS:
        raise VitquantError(
            f"unknown ViT method {name!r}; choose one of: {', '.join(sorted(METHODS))}."
        )
    return METHODS[name]


__all__ = [
    "KINDS",
    "METHODS",
    "ChannelRange",
    "Method",
    "OnlineHadamard",
    "channel_ranges",
    "get_method",
    "hadamard_rotate",
    "ln_reparam",
    "rotation_matrix",
    "smoothquant",
]
