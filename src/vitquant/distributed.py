"""This process's place in a ``torchrun`` job, and the few collectives the library needs.

Under ``torchrun`` (``WORLD_SIZE > 1``) ``dist_context`` joins the process group (gloo on CPU,
nccl with CUDA). Evaluation and analysis then give each rank its shard of a role's images
(``DataBundle.batches(..., shard=ctx.shard)``: every ``world``-th image from ``rank``) and merge
what the ranks computed with the helpers below; with world 1 every helper is the identity, so a
single process runs exactly the code it ran before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class DistContext:
    """This process's place in a ``torchrun`` job (world 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world)`` for ``DataBundle.batches``; None in a single process."""
        return (self.rank, self.world) if self.world > 1 else None


def dist_context() -> DistContext:
    """Join the process group that ``torchrun``'s environment describes, if any.

    gloo on CPU, nccl when CUDA is available (one GPU per local rank).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world <= 1:
        return DistContext(device=device)
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def all_gather_objects(obj, ctx: DistContext | None) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if ctx is None or ctx.world <= 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(
    tensor: torch.Tensor, ctx: DistContext | None, op: Literal["sum", "min", "max"] = "sum"
) -> torch.Tensor:
    """Reduce ``tensor`` in place over the ranks (integer sums are exact); returns it.

    The collective runs on ``ctx.device`` (nccl needs CUDA tensors); the result is copied back.
    """
    if ctx is None or ctx.world <= 1:
        return tensor
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    buf = tensor.to(ctx.device)
    dist.all_reduce(buf, op=ops[op])
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def interleave(parts: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Undo sharding: part ``r`` holds items ``r, r + W, r + 2W, ...`` of the whole (W parts).

    A part may be None (a rank that got no items); at least one must be a tensor.
    """
    world = len(parts)
    present = [p for p in parts if p is not None]
    if not present:
        raise ValueError("interleave needs at least one part")
    total = sum(len(p) for p in present)
    out = present[0].new_empty((total, *present[0].shape[1:]))  # (N, ...)
    for rank, part in enumerate(parts):
        if part is not None:
            out[rank::world] = part
    return out
