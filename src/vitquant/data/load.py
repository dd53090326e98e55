"""``load_data``: a data set by name or folder -> a ``DataBundle`` with its roles drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitquant.data import sources
from vitquant.data.bundle import DEFAULT_SEED, DataBundle, interleave, stratified_subset
from vitquant.data.sources import Source
from vitquant.errors import VitquantError
from vitquant.paths import assets_dir, cache_dir


def _folder_source(root: Path) -> tuple[tuple[str, ...], Source | None, Source, list[str]]:
    if not root.is_dir():
        raise VitquantError(
            f"data folder {root} does not exist. Pass --data digits, cifar10, or a folder with "
            "train/ and test/ sub-folders of class folders."
        )
    names = {p.name for p in root.iterdir() if p.is_dir()}
    train_dir = root / "train" if "train" in names else None
    test_name = next((n for n in ("test", "val", "validation") if n in names), None)
    if train_dir is None and test_name is None:
        # The folder itself is a single ImageFolder split.
        classes, only = sources.list_folder(root)
        note = (
            f"{root} has no train/ or test/: calibration, validation and test are drawn "
            "disjointly from its images"
        )
        return classes, None, only, [note]
    if train_dir is None or test_name is None:
        single = train_dir or root / test_name
        classes, only = sources.list_folder(single)
        note = (
            f"{root} has only {single.name}/: calibration, validation and test are drawn "
            "disjointly from it"
        )
        return classes, None, only, [note]
    classes, train = sources.list_folder(train_dir)
    test_classes, test = sources.list_folder(root / test_name)
    if test_classes != classes:
        raise VitquantError(
            f"{root}: train/ and {test_name}/ have different class folders "
            f"({len(classes)} vs {len(test_classes)})."
        )
    return classes, train, test, []


def _shared_cifar10() -> tuple[tuple[str, ...], Source, Source]:
    assets = assets_dir(required=False)
    folder = assets / "data" / "cifar10" if assets else None
    if folder is None or not folder.is_dir():
        return sources.torchvision_cifar10(cache_dir("torchvision"))
    classes, train = sources.decode_in_memory(folder / "train", cache_dir("datasets"))
    _, test = sources.decode_in_memory(folder / "test", cache_dir("datasets"))
    return classes, train, test


def _clip(what: str, asked: int, available: int, notes: list[str]) -> int:
    if asked > available:
        notes.append(f"{what} {asked} asked, only {available} available: using {available}")
        return available
    return asked


def load_data(
    name: str | Path,
    *,
    val: int | None = None,
    calib: int = 256,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
) -> DataBundle:
    """Load ``digits``, ``cifar10`` or an ImageFolder path into a ``DataBundle``.

    Nothing is decoded here for a folder: roles are drawn on the file list's labels.

    Args:
        name: ``digits``, ``cifar10``, or a folder with ``train/`` and ``test/`` (or one split).
        val: validation images (from train; never trained or calibrated on); default
            ``min(1000, 15% of the train split)``.
        calib: calibration images (from train, disjoint from ``val``).
        limit: use a stratified subset of this many test images.
        seed: seed of every subset.

    A request larger than what is available is clipped, and the clip is a note (``notes``).
    """
    notes: list[str] = []
    name = str(name)
    if name == "digits":
        classes, train, test = sources.digits()
    elif name == "cifar10":
        classes, train, test = _shared_cifar10()
    else:
        classes, train, test, notes = _folder_source(Path(name).expanduser())
        name = str(Path(name).expanduser())

    for arg, value in (("--val", val), ("--calib", calib), ("--limit", limit)):
        if value is not None and value < 0:
            raise VitquantError(f"{arg} must be >= 0 (got {value}).")
    if val is None:
        val = min(1000, int(0.15 * len(train if train is not None else test)))

    if train is None:
        # One split: val, calib and test are disjoint parts of it.
        pool = test
        labels = pool.labels.numpy()
        val = _clip("--val", val, len(labels) - 1, notes)
        val_idx = stratified_subset(labels, val, seed=seed)
        calib = _clip("--calib", calib, len(labels) - len(val_idx) - 1, notes)
        calib_idx = stratified_subset(labels, calib, seed=seed + 1, exclude=val_idx)
        rest = np.setdiff1d(np.arange(len(labels)), np.concatenate([val_idx, calib_idx]))
        if len(rest) == 0:
            raise VitquantError(f"{name}: --val + --calib use every image; none is left to test.")
        test_split = pool.take(rest)
        fit_idx = np.array([], dtype=np.int64)
    else:
        pool, test_split = train, test
        labels = pool.labels.numpy()
        if val >= len(labels):
            raise VitquantError(f"--val {val} >= the {len(labels)} training images.")
        val_idx = stratified_subset(labels, val, seed=seed)
        calib = _clip("--calib", calib, len(labels) - len(val_idx), notes)
        calib_idx = stratified_subset(labels, calib, seed=seed + 1, exclude=val_idx)
        fit_idx = np.setdiff1d(np.arange(len(labels)), val_idx)

    test_labels = test_split.labels.numpy()
    if limit is not None:
        limit = _clip("--limit", limit, len(test_labels), notes)
        test_idx = stratified_subset(test_labels, limit, seed=seed + 2)
    else:
        test_idx = interleave(np.arange(len(test_labels)), test_labels)
    return DataBundle(
        name=name,
        classes=tuple(classes),
        pool=pool,
        test_split=test_split,
        val_idx=val_idx,
        calib_idx=calib_idx,
        fit_idx=fit_idx,
        test_idx=test_idx,
        seed=seed,
        notes=notes,
    )
