"""QAT under ``torchrun``: each rank's share of an epoch and the state rank 0 hands out.

Each rank trains on its shard of the epoch's images (``fit_batches``; every rank takes the same
number of steps, ``steps_per_epoch``); after every epoch the buffers (observer ranges, scales,
BatchNorm statistics) are broadcast from rank 0, which alone evaluates and broadcasts the epoch's
record. With one process every function here is a no-op or the plain single-process answer.
"""

from __future__ import annotations

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.distributed import DistContext
from vitquant.quant.qat.config import QATConfig


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Make every rank's buffers (observer ranges, scales, BN statistics) equal to rank 0's."""
    if ctx.world <= 1:
        return
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank (pickled through ``broadcast_object_list``)."""
    if ctx.world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fit_batches(bundle: DataBundle, spec, cfg: QATConfig, epoch: int, ctx: DistContext):
    """This rank's batches of epoch ``epoch``: a seeded permutation of (a subset of) fit, sharded.

    Every rank draws the same permutation, keeps every ``world``-th image and the same number of
    them (so the ranks take the same number of steps), in batches of ``batch_size // world``.
    """
    n_fit = len(bundle.fit_idx)
    n = n_fit if cfg.train_limit is None else min(cfg.train_limit, n_fit)
    order = torch.randperm(
        n_fit, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    )[:n]
    per_rank = n // ctx.world
    mine = order[ctx.rank :: ctx.world][:per_rank]
    batch = max(1, cfg.batch_size // ctx.world)
    aug = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1_009 + ctx.rank)
    yield from bundle.batches(
        "fit", spec, batch_size=batch, order=mine, augment=cfg.augment, generator=aug
    )


def steps_per_epoch(n_fit: int, cfg: QATConfig, world: int) -> int:
    """Optimizer steps each rank takes per epoch (the length of its ``fit_batches``)."""
    n = n_fit if cfg.train_limit is None else min(cfg.train_limit, n_fit)
    batch = max(1, cfg.batch_size // world)
    return max(1, -(-(n // world) // batch))
