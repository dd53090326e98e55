"""Where images come from: decoded tensors in memory, or a list of files read on demand.

A *source* is one split (train or test) of a data set. It knows its labels without decoding any
image, so roles can be drawn from the labels alone; images are decoded only when a batch needs
them:

- ``Split``: decoded images ``(N, C, H, W)`` held in memory (the embedded digits and the shared
  CIFAR-10, small enough that decoding once and keeping them is the fastest);
- ``FolderSource``: an ImageFolder's ``(path, label)`` list; each image is opened with PIL when a
  batch needs it (``load``), so an ImageNet-size folder costs a list of paths, not its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitquant.errors import VitquantError


class ImageReadError(VitquantError):
    """An image file that cannot be decoded, found while a batch was being read.

    Raised inside a DataLoader worker, it reaches the main process re-built from a message that
    carries the worker's traceback; the constructor keeps only our own one-line message so the
    user sees one clear line.
    """

    def __init__(self, message: str) -> None:
        if "Traceback" in message:  # re-raised by torch.utils.data from a worker process
            last = [ln for ln in message.strip().splitlines() if ln.strip()][-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


@dataclass
class Split:
    """Decoded images ``(N, C, H, W)`` (uint8 0..255 or float 0..1) and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def take(self, idx: np.ndarray) -> Split:
        t = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.images[t], self.labels[t])

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as a PIL image (for models whose transform works on PIL images)."""
        x = self.images[i]
        if x.dtype != torch.uint8:  # float 0..1 (digits)
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        arr = x.permute(1, 2, 0).numpy()  # (H, W, C)
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


@dataclass
class FolderSource:
    """Image files with their labels; nothing is decoded until ``load``.

    Attributes:
        paths: one path per image, in ImageFolder order (class by class, files sorted).
        labels: int64 labels ``(N,)``.
    """

    paths: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return 3  # every image is converted to RGB, as timm's and torchvision's loaders do

    def take(self, idx: np.ndarray) -> FolderSource:
        idx = np.asarray(idx, dtype=np.int64)
        return FolderSource([self.paths[i] for i in idx], self.labels[torch.as_tensor(idx)])

    def load(self, i: int) -> Image.Image:
        """Open image ``i`` (decoded here; converted to RGB by the transform).

        Raises:
            ImageReadError: the file is missing, truncated or not an image.
        """
        path = self.paths[i]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError: OSError
            raise ImageReadError(
                f"cannot read image {path}: {exc}. Remove or replace the file."
            ) from None
        return img


Source = Split | FolderSource


def list_folder(root: Path) -> tuple[tuple[str, ...], FolderSource]:
    """The ``(path, label)`` list of an ImageFolder split, without decoding any image."""
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root), loader=lambda p: p)  # enumerate only
    except (FileNotFoundError, OSError) as exc:
        raise VitquantError(
            f"{root} holds no images in class sub-folders ({exc}). Expected "
            f"{root}/<class>/<image>.jpg."
        ) from exc
    if not folder.samples:
        raise VitquantError(f"{root} holds no images.")
    paths = [p for p, _ in folder.samples]
    labels = torch.tensor([c for _, c in folder.samples], dtype=torch.long)
    return tuple(folder.classes), FolderSource(paths, labels)


def decode_in_memory(root: Path, cache: Path) -> tuple[tuple[str, ...], Split]:
    """Decode an ImageFolder split of equal-size images once into uint8 ``(N, 3, H, W)``.

    Used for the shared CIFAR-10 (60,000 images of 32x32): decoding it per batch would cost more
    than the small models it feeds. The array is cached in ``cache`` (keyed by the folder, its
    size and its newest file), so the second load takes about a second. Images of different sizes
    are refused rather than resized (a folder of real photos is read lazily instead).
    """
    import hashlib

    from vitquant.progress import track

    classes, files = list_folder(root)
    sample = files.paths[:: max(1, len(files) // 100)]
    newest = max(Path(p).stat().st_mtime_ns for p in sample)
    key = hashlib.sha1(f"{root.resolve()}|{len(files)}|{newest}".encode()).hexdigest()[:16]
    cached = cache / f"{root.name}-{key}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return classes, Split(torch.from_numpy(z["x"]), torch.from_numpy(z["y"]))
    arrays, size = [], None
    for i in track(range(len(files)), total=len(files), description=f"decoding {root.name}"):
        img = files.load(i).convert("RGB")
        if size is None:
            size = img.size
        elif img.size != size:
            raise VitquantError(
                f"{files.paths[i]} is {img.size[0]}x{img.size[1]}, unlike the {size[0]}x{size[1]} "
                f"of the other images in {root}; pass the folder as a path to read it lazily."
            )
        arrays.append(np.asarray(img, dtype=np.uint8))
    x = np.stack(arrays).transpose(0, 3, 1, 2).copy()  # (N, H, W, 3) -> (N, 3, H, W)
    y = files.labels.numpy()
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(cached)
    return classes, Split(torch.from_numpy(x), torch.from_numpy(y))


def digits() -> tuple[tuple[str, ...], Split, Split]:
    """scikit-learn's 8x8 digits as float ``(N, 1, 8, 8)`` in [0, 1]: 1437 train, 360 test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.tensor(d.target, dtype=torch.long)
    # Deterministic 80/20 stratified split (1437 train, 360 test).
    tr, te = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=d.target, random_state=0
    )
    tr, te = np.sort(tr), np.sort(te)
    classes = tuple(str(i) for i in range(10))
    return classes, Split(images[tr], labels[tr]), Split(images[te], labels[te])


def torchvision_cifar10(cache: Path) -> tuple[tuple[str, ...], Split, Split]:
    """CIFAR-10 through torchvision's downloader (when the shared JPEGs are absent)."""
    from torchvision.datasets import CIFAR10

    try:
        tr = CIFAR10(str(cache), train=True, download=True)
        te = CIFAR10(str(cache), train=False, download=True)
    except Exception as exc:
        raise VitquantError(
            "CIFAR-10 not found: set VITQUANT_ASSETS to the shared assets (data/cifar10) or go "
            f"online so torchvision can download it ({exc})."
        ) from exc

    def split(ds) -> Split:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return Split(x, torch.tensor(ds.targets, dtype=torch.long))

    return tuple(tr.classes), split(tr), split(te)
