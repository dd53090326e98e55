"""Batches of model inputs from a source: a vectorised path and a streamed DataLoader path.

- In-memory images for registry models: whole batches are sliced and transformed at once
  (``to_model_input``), which is the fastest for 8x8 and 32x32 images.
- Everything else (image folders, and any ``timm:*`` model): a ``torch.utils.data.DataLoader``
  whose worker processes open and transform each image (``pil_transform``). Memory is a few
  batches in flight, whatever the number of images; the decode runs beside the model's forward
  pass, in other processes.

Worker processes: ``$VITQUANT_WORKERS`` (default: the number of CPU cores, at most 4); 0 decodes
in the main process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitquant.data.sources import FolderSource, Source, Split
from vitquant.data.transforms import (
    PilTransform,
    pil_transform,
    random_crop_flip,
    timm_data_config,
    to_model_input,
)
from vitquant.errors import VitquantError
from vitquant.progress import track


def default_workers() -> int:
    """DataLoader worker processes: ``$VITQUANT_WORKERS``, else min(4, CPU cores)."""
    value = os.environ.get("VITQUANT_WORKERS")
    if value is not None:
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 0:
            raise VitquantError(f"VITQUANT_WORKERS={value!r}: expected an integer >= 0.")
        return n
    return min(4, os.cpu_count() or 1)


class _Images(Dataset):
    """``source[positions[k]]`` through ``transform``, with its label."""

    def __init__(self, source: Source, positions: np.ndarray, transform: PilTransform) -> None:
        self.source = source
        self.positions = positions
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.positions[k])
        return self.transform(self.source.load(i)), self.source.labels[i]


def uses_vectorised_path(source: Source, spec) -> bool:
    return isinstance(source, Split) and timm_data_config(spec) is None


def iterate(
    source: Source,
    positions: np.ndarray,
    spec,
    *,
    batch_size: int,
    augment: bool = False,
    generator: torch.Generator | None = None,
    progress: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches of ``source[positions]`` preprocessed for ``spec``, in order."""
    n_batches = -(-len(positions) // batch_size) if len(positions) else 0
    if n_batches == 0:
        return
    if uses_vectorised_path(source, spec):
        starts = range(0, len(positions), batch_size)
        if progress:
            starts = track(starts, total=n_batches, description=progress)
        order = torch.as_tensor(positions, dtype=torch.long)
        for start in starts:
            idx = order[start : start + batch_size]
            x = to_model_input(source.images[idx], spec)
            if augment and x.shape[1] == 3:
                x = random_crop_flip(x, generator=generator)
            yield x, source.labels[idx]
        return

    if isinstance(source, Split) and source.channels != spec.input_size[0] == 1:
        raise VitquantError(f"{spec.name} expects 1-channel images but the data has 3 channels.")
    if isinstance(source, FolderSource) and spec.input_size[0] != 3:
        raise VitquantError(
            f"{spec.name} expects {spec.input_size[0]}-channel images; image folders are read as "
            "RGB. Use a 3-channel model."
        )
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        _Images(source, np.asarray(positions), pil_transform(spec, train=augment)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=min(workers, n_batches),
        generator=generator,  # seeds the workers' augmentation
    )
    batches = iter(loader)
    if progress:
        batches = track(batches, total=n_batches, description=progress)
    yield from batches
