"""A data source with three disjoint roles, chosen on the labels before any image is decoded.

Roles (all seeded and class-stratified, because an ImageFolder is sorted by class and "the first
N" would be all airplanes):

- ``val``: validation images drawn from the train split; every *choice* vitquant makes uses them.
  ``train`` never trains on them and calibration never sees them.
- ``calib``: calibration images drawn from the rest of the train split.
- ``test``: the test split (optionally a stratified ``limit`` subset); only for reported figures.
- ``fit``: the train split minus ``val``: what ``train``/QAT learn from.

Each role's indices are stored class-interleaved (one image of each class, then the next), so
``limit=k`` on any role - "the first k images" - is itself a stratified subset.

Images are decoded per batch (see ``loader``); only the small embedded sets (digits, the shared
CIFAR-10) are held decoded in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from vitquant.data import loader
from vitquant.data.sources import Source
from vitquant.errors import VitquantError

DEFAULT_SEED = 0
ROLES = ("val", "calib", "fit", "test")


@dataclass
class DataBundle:
    """A data source with its roles; see the module docstring."""

    name: str
    classes: tuple[str, ...]
    pool: Source  # where val/calib/fit come from (the train split, or the only split there is)
    test_split: Source
    val_idx: np.ndarray
    calib_idx: np.ndarray
    fit_idx: np.ndarray
    test_idx: np.ndarray
    seed: int = DEFAULT_SEED
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.pool.channels

    def _source_and_idx(self, role: str) -> tuple[Source, np.ndarray]:
        if role == "test":
            return self.test_split, self.test_idx
        idx = {"val": self.val_idx, "calib": self.calib_idx, "fit": self.fit_idx}.get(role)
        if idx is None:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        return self.pool, idx

    def role(self, role: str) -> Source:
        """The images (decoded, or as files) and labels of a role (``val``, ``calib``, ...)."""
        source, idx = self._source_and_idx(role)
        return source.take(idx)

    def labels(self, role: str, *, limit: int | None = None) -> torch.Tensor:
        """Labels of ``role`` in batch order (the first ``limit`` of them)."""
        source, idx = self._source_and_idx(role)
        return source.labels[torch.as_tensor(idx[:limit], dtype=torch.long)]

    def sizes(self) -> dict[str, int]:
        return {
            "fit": len(self.fit_idx),
            "val": len(self.val_idx),
            "calib": len(self.calib_idx),
            "test": len(self.test_idx),
        }

    def describe(self) -> dict:
        sizes = {f"n_{k}": v for k, v in self.sizes().items()}
        return {
            "data": self.name,
            "classes": list(self.classes),
            "seed": self.seed,
            **sizes,
            "notes": self.notes,
        }

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
        order: np.ndarray | torch.Tensor | None = None,
        shard: tuple[int, int] | None = None,
        progress: str | None = None,
        workers: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches of ``role`` preprocessed for model ``spec``.

        Args:
            role: ``val``, ``calib``, ``fit`` or ``test``.
            spec: the model's ``ModelSpec`` (its transform: timm's for ``timm:*`` models).
            shuffle: a permutation drawn from ``generator`` (training).
            augment: the model's training transform.
            limit: only the first ``limit`` images of the role (a stratified prefix), or of the
                permutation when shuffling.
            order: explicit positions within the role, in the order to read them (QAT's shards);
                overrides ``shuffle`` and ``limit``.
            shard: ``(rank, world)``: this rank's share, every ``world``-th image from ``rank``
                (distributed evaluation); the shares partition the role.
            progress: a description to show a progress bar.
            workers: DataLoader worker processes (default ``loader.default_workers()``).
        """
        source, idx = self._source_and_idx(role)
        if order is None:
            n = len(idx) if limit is None else min(limit, len(idx))
            if shuffle:
                order = torch.randperm(len(idx), generator=generator)[:n]
            else:
                order = torch.arange(n)
        positions = idx[np.asarray(order, dtype=np.int64)]
        if shard is not None:
            rank, world = shard
            positions = positions[rank::world]
        yield from loader.iterate(
            source,
            positions,
            spec,
            batch_size=batch_size,
            augment=augment,
            generator=generator,
            progress=progress,
            workers=workers,
        )


def stratified_subset(
    labels: np.ndarray, n: int, *, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """``n`` indices into ``labels``, class-stratified and seeded, none of them in ``exclude``.

    The indices come class-interleaved (see ``interleave``), so any prefix is stratified too.
    """
    from sklearn.model_selection import train_test_split

    candidates = np.arange(len(labels))
    if exclude is not None and len(exclude):
        candidates = np.setdiff1d(candidates, exclude)
    if n <= 0:
        return np.array([], dtype=np.int64)
    if n >= len(candidates):
        return interleave(candidates, labels)
    sub_labels = labels[candidates]
    counts = np.bincount(sub_labels)
    if n >= len(counts[counts > 0]) and (counts[counts > 0] >= 2).all():
        chosen, _ = train_test_split(
            candidates, train_size=n, stratify=sub_labels, random_state=seed
        )
    else:  # too few to stratify: a seeded random draw
        chosen = np.random.default_rng(seed).choice(candidates, size=n, replace=False)
    return interleave(np.sort(chosen).astype(np.int64), labels)


def interleave(idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``idx`` reordered round-robin over classes: the first of each class, then the second, ...

    Within a class the original (file) order is kept, so the result is deterministic.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        return idx
    cls = labels[idx]
    # rank of each index within its class, in the given order
    rank = np.empty(len(idx), dtype=np.int64)
    for c in np.unique(cls):
        members = np.flatnonzero(cls == c)
        rank[members] = np.arange(len(members))
    return idx[np.lexsort((cls, rank))]


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
