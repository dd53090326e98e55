"""Data: sources (files or decoded tensors) -> a ``DataBundle`` of roles -> model-ready batches.

- ``sources``: one split of a data set; a folder is a list of files decoded on demand.
- ``transforms``: each model's own input transform (timm's for ``timm:*`` models).
- ``loader``: batches through a DataLoader with worker processes (or a vectorised in-memory path).
- ``bundle``: the roles (val / calib / fit / test), seeded and class-stratified.
- ``load``: ``load_data(name)`` for ``digits``, ``cifar10`` or a folder.
"""

from vitquant.data.bundle import (
    DEFAULT_SEED,
    DataBundle,
    check_compatible,
    interleave,
    stratified_subset,
)
from vitquant.data.load import load_data
from vitquant.data.sources import FolderSource, ImageReadError, Split
from vitquant.data.transforms import pil_transform, random_crop_flip, to_model_input

__all__ = [
    "DEFAULT_SEED",
    "DataBundle",
    "FolderSource",
    "ImageReadError",
    "Split",
    "check_compatible",
    "interleave",
    "load_data",
    "pil_transform",
    "random_crop_flip",
    "stratified_subset",
    "to_model_input",
]
