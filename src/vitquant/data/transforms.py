"""Each model's own input transform: timm's for ``timm:*`` models, the registry's for ours.

- ``timm:*`` models use timm's evaluation transform, exactly as ``timm.data.create_transform(
  **timm.data.resolve_data_config(model=m))`` builds it (resize by ``crop_pct`` with the model's
  interpolation, centre crop, normalise), and timm's training transform for ``train``/QAT. The
  resolved data config is stored in the spec (``spec.extra["data_config"]``) when the spec is
  made, so the transform is known without building the model.
- Registry models (trained here at 32x32 or 8x8) keep the transform they were trained with:
  pixels to [0, 1], resized to the model's size only when they differ, normalised; training adds
  a reflect-padded random crop and a horizontal flip (3-channel images only).

In-memory images for registry models take a vectorised path on whole batches (``to_model_input``
and ``random_crop_flip``), which is the same arithmetic without a per-image Python call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from vitquant.errors import VitquantError

PilTransform = Callable[[Image.Image], torch.Tensor]


def timm_data_config(spec) -> dict | None:
    """timm's resolved data config of a ``timm:*`` spec (None for registry models)."""
    return spec.extra.get("data_config")


def pil_transform(spec, *, train: bool = False) -> PilTransform:
    """The per-image transform ``PIL image -> (C, H, W) float tensor`` for ``spec``."""
    from torchvision import transforms as T

    cfg = timm_data_config(spec)
    if cfg is not None:
        from timm.data import create_transform

        # Images reach timm's transform as RGB, as torchvision's ImageFolder loader gives them.
        return T.Compose([_ToMode("RGB"), create_transform(**cfg, is_training=train)])
    c, h, w = spec.input_size
    steps: list = [_ToMode("RGB" if c == 3 else "L")]
    steps.append(T.Resize((h, w), interpolation=T.InterpolationMode.BILINEAR))
    if train and c == 3:
        steps += [T.RandomCrop((h, w), padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)


class _ToMode:
    """Convert a PIL image to ``mode`` (RGB for 3-channel models: grayscale and CMYK included)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToMode({self.mode})"


def to_model_input(images: torch.Tensor, spec) -> torch.Tensor:
    """Vectorised registry transform: scale to [0, 1], match channels and size, normalise."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    c, h, w = spec.input_size
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise VitquantError(
                f"{spec.name} expects {c}-channel images but the data has {x.shape[1]} channels."
            )
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def random_crop_flip(
    x: torch.Tensor, *, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample random crop (reflect padding) and horizontal flip of a batch ``(N, C, H, W)``.

    Hand-written because torchvision's transforms draw one crop per call, i.e. per batch here,
    and a per-image Python transform would undo the point of decoding once.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out
