"""Per-channel ranges of the tensors a transform balances, over calibration batches.

``channel_ranges`` hooks each named module and keeps a running per-channel minimum, maximum and
absolute maximum over the last dimension (the channel dimension of ``(B, N, C)`` token tensors),
reducing every other dimension. What is observed depends on the module:

- a ``Linear``: its **input** (what an activation quantizer in front of it sees);
- anything else (``LayerNorm``, ``GELU``, ``attn.attn_drop`` = the softmax probabilities): its
  **output**.

Attention runs unfused while observing (``vitquant.analysis.hooks.unfused_attention``), so the
modules inside timm's attention (``attn_drop``) are really called.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from vitquant.analysis.hooks import unfused_attention
from vitquant.errors import VitquantError


@dataclass(frozen=True)
class ChannelRange:
    """Per-channel extremes of one observed tensor, each of shape (C,).

    Attributes:
        min: smallest value of each channel.
        max: largest value of each channel.
        absmax: largest absolute value of each channel (``max(|min|, |max|)``).
        count: values seen per channel (tokens x images).
    """

    min: torch.Tensor
    max: torch.Tensor
    absmax: torch.Tensor
    count: int

    @property
    def width(self) -> torch.Tensor:
        """``max - min`` per channel, (C,)."""
        return self.max - self.min


def images_of(batch) -> torch.Tensor:
    """The images of one calibration batch: ``(images, labels)``, ``[images, ...]`` or a tensor."""
    x = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(x, torch.Tensor):
        raise VitquantError(
            f"a calibration batch holds a {type(x).__name__}; pass (images, labels) tensor "
            "batches, e.g. a DataLoader or a list of (x, y) pairs."
        )
    return x


def run_batches(model: nn.Module, batches: Iterable) -> int:
    """Run ``model`` (eval mode, no grad, unfused attention) over ``batches``; return the images."""
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise VitquantError(
            f"batches must be a re-iterable of (images, labels) batches, not a "
            f"{type(batches).__name__}; wrap one batch as [(x, y)]."
        )
    was_training = model.training
    model.eval()
    images = 0
    try:
        with torch.no_grad(), unfused_attention(model):
            for batch in batches:
                x = images_of(batch)  # (B, C, H, W)
                model(x)
                images += len(x)
    finally:
        model.train(was_training)
    if images == 0:
        raise VitquantError("the calibration batches are empty; pass at least one image.")
    return images


def _resolve(model: nn.Module, modules: Iterable[str]) -> dict[str, nn.Module]:
    named = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for name in modules:
        if name not in named or not name:
            close = difflib.get_close_matches(name, [n for n in named if n], n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise VitquantError(f"channel_ranges: the model has no module {name!r}.{hint}")
        out[name] = named[name]
    if not out:
        raise VitquantError("channel_ranges: name at least one module to observe.")
    return out


def channel_ranges(
    model: nn.Module, batches: Iterable, modules: Iterable[str]
) -> dict[str, ChannelRange]:
    """Per-channel (last dim) min, max and abs-max of what each module sees, over ``batches``.

    Args:
        model: the float model; run in eval mode without gradients (its mode is restored).
        batches: a re-iterable of ``(images, labels)`` batches on the model's device.
        modules: module names; a ``Linear``'s input is observed, any other module's output.

    Returns:
        ``{name: ChannelRange}`` in the order of ``modules``.

    Raises:
        VitquantError: a name the model does not have (with the closest names), no batches.
    """
    targets = _resolve(model, list(modules))
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}

    def record(name: str, t: torch.Tensor) -> None:
        flat = t.detach().reshape(-1, t.shape[-1]).float()  # (tokens, C)
        mn, mx = flat.amin(0), flat.amax(0)  # (C,)
        if name in lo:
            lo[name] = torch.minimum(lo[name], mn)
            hi[name] = torch.maximum(hi[name], mx)
            count[name] += flat.shape[0]
        else:
            lo[name], hi[name], count[name] = mn, mx, flat.shape[0]

    def make(name: str, module: nn.Module):
        if isinstance(module, nn.Linear):
            return module.register_forward_pre_hook(lambda _m, args: record(name, args[0]))
        return module.register_forward_hook(lambda _m, _i, out: record(name, out))

    handles = [make(name, module) for name, module in targets.items()]
    try:
        run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in targets if name not in lo]
    if missing:
        raise VitquantError(
            f"channel_ranges: {', '.join(missing)} never ran in the forward pass; name modules "
            "the model calls (e.g. blocks.0.norm1, blocks.0.attn.qkv)."
        )
    return {
        name: ChannelRange(
            min=lo[name],
            max=hi[name],
            absmax=torch.maximum(lo[name].abs(), hi[name].abs()),
            count=count[name],
        )
        for name in targets
    }
