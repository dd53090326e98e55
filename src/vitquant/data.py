"""Data sources -> one ``DataBundle`` holding decoded images and three disjoint roles.

Roles (all seeded and class-stratified, because an ImageFolder is sorted by class and "the first
N" would be all airplanes):

- ``val``: validation images drawn from the train split; every *choice* vitquant makes uses them.
  ``train`` never trains on them and calibration never sees them.
- ``calib``: calibration images drawn from the rest of the train split.
- ``test``: the test split (optionally a stratified ``limit`` subset); only for reported figures.
- ``fit``: the train split minus ``val``: what ``train``/QAT learn from.

Images are decoded once and cached as uint8 arrays in the user cache dir, so loading CIFAR-10 a
second time takes about a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitquant.errors import VitquantError
from vitquant.paths import assets_dir, cache_dir
from vitquant.progress import track

DEFAULT_SEED = 0


@dataclass
class Split:
    """Decoded images ``(N, C, H, W)`` (uint8 0..255 or float 0..1) and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    """A data source with its roles; see the module docstring."""

    name: str
    classes: tuple[str, ...]
    pool: Split  # where val/calib/fit come from (the train split, or the only split there is)
    test_split: Split
    val_idx: np.ndarray
    calib_idx: np.ndarray
    fit_idx: np.ndarray
    test_idx: np.ndarray
    seed: int = DEFAULT_SEED
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.pool.images.shape[1])

    def role(self, role: str) -> Split:
        """The images and labels of ``val``, ``calib``, ``fit`` or ``test``."""
        if role == "test":
            return _take(self.test_split, self.test_idx)
        idx = {"val": self.val_idx, "calib": self.calib_idx, "fit": self.fit_idx}.get(role)
        if idx is None:
            raise ValueError(f"unknown role {role!r}")
        return _take(self.pool, idx)

    def sizes(self) -> dict[str, int]:
        return {
            "fit": len(self.fit_idx),
            "val": len(self.val_idx),
            "calib": len(self.calib_idx),
            "test": len(self.test_idx),
        }

    def describe(self) -> dict:
        return {"data": self.name, "classes": list(self.classes), "seed": self.seed,
                **{f"n_{k}": v for k, v in self.sizes().items()}, "notes": self.notes}  # fmt: skip

    def batches(
        self,
        role: str,
        spec,
        *,
        batch_size: int = 256,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        limit: int | None = None,
        progress: str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches of ``role`` preprocessed for model ``spec``.

        Args:
            role: ``val``, ``calib``, ``fit`` or ``test``.
            spec: the model's ``ModelSpec`` (input size, mean/std).
            shuffle: reshuffle (with ``generator``) - for training.
            augment: random crop + flip of 3-channel images (training only).
            limit: use only the first ``limit`` images of the role (already stratified order).
            progress: a description to show a progress bar.
        """
        split = self.role(role)
        n = len(split) if limit is None else min(limit, len(split))
        order = torch.randperm(len(split), generator=generator)[:n] if shuffle else torch.arange(n)
        starts = range(0, n, batch_size)
        if progress:
            starts = track(starts, total=len(starts), description=progress)
        for start in starts:
            idx = order[start : start + batch_size]
            x = to_model_input(split.images[idx], spec)
            if augment and x.shape[1] == 3:
                x = random_crop_flip(x, generator=generator)
            yield x, split.labels[idx]


def _take(split: Split, idx: np.ndarray) -> Split:
    t = torch.as_tensor(idx, dtype=torch.long)
    return Split(split.images[t], split.labels[t])


def to_model_input(images: torch.Tensor, spec) -> torch.Tensor:
    """Scale to [0, 1], match the model's channels and size, normalise with its mean/std."""
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


def stratified_subset(
    labels: np.ndarray, n: int, *, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """``n`` indices into ``labels``, class-stratified and seeded, none of them in ``exclude``."""
    from sklearn.model_selection import train_test_split

    candidates = np.arange(len(labels))
    if exclude is not None and len(exclude):
        candidates = np.setdiff1d(candidates, exclude)
    if n <= 0:
        return np.array([], dtype=np.int64)
    if n >= len(candidates):
        return candidates
    sub_labels = labels[candidates]
    counts = np.bincount(sub_labels)
    if n >= len(counts[counts > 0]) and (counts[counts > 0] >= 2).all():
        chosen, _ = train_test_split(
            candidates, train_size=n, stratify=sub_labels, random_state=seed
        )
    else:  # too few to stratify: a seeded random draw
        chosen = np.random.default_rng(seed).choice(candidates, size=n, replace=False)
    return np.sort(chosen).astype(np.int64)


# --------------------------------------------------------------------------- sources


def _digits() -> tuple[tuple[str, ...], Split, Split]:
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


def _decode_folder(root: Path) -> tuple[tuple[str, ...], Split]:
    """Decode an ImageFolder split once into uint8 ``(N, 3, H, W)``, cached on disk."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root), loader=lambda p: p)  # enumerate only
    except (FileNotFoundError, OSError) as exc:
        raise VitquantError(
            f"{root} holds no images in class sub-folders ({exc}). Expected "
            f"{root}/<class>/<image>.jpg."
        ) from exc
    samples = folder.samples
    if not samples:
        raise VitquantError(f"{root} holds no images.")
    newest = max(Path(p).stat().st_mtime_ns for p, _ in samples[:: max(1, len(samples) // 100)])
    key = hashlib.sha1(f"{root.resolve()}|{len(samples)}|{newest}".encode()).hexdigest()[:16]
    cached = cache_dir("datasets") / f"{root.name}-{key}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return tuple(folder.classes), Split(torch.from_numpy(z["x"]), torch.from_numpy(z["y"]))

    arrays = []
    size = None
    for path, _ in track(samples, total=len(samples), description=f"decoding {root.name}"):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if size is None:
                    size = im.size
                elif im.size != size:
                    im = im.resize(size)
                arrays.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as exc:
            raise VitquantError(f"cannot read image {path}: {exc}. Remove or replace it.") from exc
    x = np.stack(arrays).transpose(0, 3, 1, 2).copy()  # (N, H, W, 3) -> (N, 3, H, W)
    y = np.array([c for _, c in samples], dtype=np.int64)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(cached)
    return tuple(folder.classes), Split(torch.from_numpy(x), torch.from_numpy(y))


def _torchvision_cifar10() -> tuple[tuple[str, ...], Split, Split]:
    from torchvision.datasets import CIFAR10

    root = cache_dir("torchvision")
    try:
        tr = CIFAR10(str(root), train=True, download=True)
        te = CIFAR10(str(root), train=False, download=True)
    except Exception as exc:
        raise VitquantError(
            "CIFAR-10 not found: set VITQUANT_ASSETS to the shared assets (data/cifar10) or go "
            f"online so torchvision can download it ({exc})."
        ) from exc

    def split(ds) -> Split:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return Split(x, torch.tensor(ds.targets, dtype=torch.long))

    return tuple(tr.classes), split(tr), split(te)


def _folder_source(root: Path) -> tuple[tuple[str, ...], Split | None, Split, list[str]]:
    if not root.is_dir():
        raise VitquantError(
            f"data folder {root} does not exist. Pass --data digits, cifar10, or a folder with "
            "train/ and test/ sub-folders of class folders."
        )
    names = {p.name for p in root.iterdir() if p.is_dir()}
    train_dir = root / "train" if "train" in names else None
    test_name = next((n for n in ("test", "val", "validation") if n in names), None)
    notes = []
    if train_dir is None and test_name is None:
        # The folder itself is a single ImageFolder split.
        classes, only = _decode_folder(root)
        notes.append(f"{root} has no train/ or test/: calibration, validation and test are "
                     "drawn disjointly from its images")  # fmt: skip
        return classes, None, only, notes
    if train_dir is None or test_name is None:
        single = train_dir or root / test_name
        classes, only = _decode_folder(single)
        notes.append(f"{root} has only {single.name}/: calibration, validation and test are "
                     f"drawn disjointly from it")  # fmt: skip
        return classes, None, only, notes
    classes, train = _decode_folder(train_dir)
    test_classes, test = _decode_folder(root / test_name)
    if test_classes != classes:
        raise VitquantError(
            f"{root}: train/ and {test_name}/ have different class folders "
            f"({len(classes)} vs {len(test_classes)})."
        )
    return classes, train, test, notes


def load_data(
    name: str | Path,
    *,
    val: int | None = None,
    calib: int = 256,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
) -> DataBundle:
    """Load ``digits``, ``cifar10`` or an ImageFolder path into a ``DataBundle``.

    Args:
        name: ``digits``, ``cifar10``, or a folder with ``train/`` and ``test/``.
        val: validation images (from train; never trained or calibrated on); default
            ``min(1000, 15% of the train split)``.
        calib: calibration images (from train, disjoint from ``val``).
        limit: use a stratified subset of this many test images.
        seed: seed of every subset.
    """
    notes: list[str] = []
    name = str(name)
    if name == "digits":
        classes, train, test = _digits()
    elif name == "cifar10":
        assets = assets_dir(required=False)
        folder = assets / "data" / "cifar10" if assets else None
        if folder is not None and folder.is_dir():
            classes, train, test, notes = _folder_source(folder)
        else:
            classes, train, test = _torchvision_cifar10()
    else:
        classes, train, test, notes = _folder_source(Path(name).expanduser())
        name = str(Path(name).expanduser())

    if val is None:
        val = min(1000, int(0.15 * len(train if train is not None else test)))
    for arg, value in (("--val", val), ("--calib", calib), ("--limit", limit)):
        if value is not None and value < 0:
            raise VitquantError(f"{arg} must be >= 0 (got {value}).")

    if train is None:
        # One split: val, calib and test are disjoint parts of it.
        pool = test
        labels = pool.labels.numpy()
        val_idx = stratified_subset(labels, val, seed=seed)
        calib_idx = stratified_subset(labels, calib, seed=seed + 1, exclude=val_idx)
        rest = np.setdiff1d(np.arange(len(labels)), np.concatenate([val_idx, calib_idx]))
        if len(rest) == 0:
            raise VitquantError(f"{name}: --val + --calib use every image; none is left to test.")
        test_split = _take(pool, rest)
        fit_idx = np.array([], dtype=np.int64)
    else:
        pool, test_split = train, test
        labels = pool.labels.numpy()
        if val >= len(labels):
            raise VitquantError(f"--val {val} >= the {len(labels)} training images.")
        val_idx = stratified_subset(labels, val, seed=seed)
        calib_idx = stratified_subset(labels, calib, seed=seed + 1, exclude=val_idx)
        fit_idx = np.setdiff1d(np.arange(len(labels)), val_idx)

    test_labels = test_split.labels.numpy()
    test_idx = (
        stratified_subset(test_labels, limit, seed=seed + 2)
        if limit is not None
        else np.arange(len(test_labels))
    )
    return DataBundle(
        name=name, classes=tuple(classes), pool=pool, test_split=test_split,
        val_idx=val_idx, calib_idx=calib_idx, fit_idx=fit_idx, test_idx=test_idx,
        seed=seed, notes=notes,
    )  # fmt: skip


def check_compatible(bundle: DataBundle, spec) -> None:
    """Raise when the model's classes do not match the data's."""
    if spec.classes is None or spec.extra.get("any_classes"):
        if spec.num_classes is not None and spec.num_classes != len(bundle.classes):
            raise VitquantError(
                f"{spec.name} has {spec.num_classes} outputs but {bundle.name} has "
                f"{len(bundle.classes)} classes; pass --num-classes {len(bundle.classes)}."
            )
        return
    if len(spec.classes) != len(bundle.classes):
        raise VitquantError(
            f"{spec.name} predicts {len(spec.classes)} classes but {bundle.name} has "
            f"{len(bundle.classes)} ({', '.join(bundle.classes[:5])}...). Use the data it was "
            "trained on."
        )
    if tuple(spec.classes) != tuple(bundle.classes):
        raise VitquantError(
            f"{spec.name}'s classes {list(spec.classes)} differ from {bundle.name}'s "
            f"{list(bundle.classes)}; labels would not line up."
        )
