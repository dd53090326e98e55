"""Accuracy, size on disk and latency of a model - the numbers every results row carries."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.distributed import DistContext, all_gather_objects, interleave

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor],
    bundle: DataBundle,
    role: str,
    spec,
    *,
    batch_size: int | None = None,
    progress: str | None = None,
    ctx: DistContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, classes)`` and labels ``(N,)`` of ``model`` on ``role``.

    Args:
        batch_size: images per forward pass (default ``eval_batch_size(spec)``).
        progress: a description to show a progress bar.
        ctx: with a distributed ``ctx`` (``torchrun``) each rank runs its shard of the images
            and every rank gets all ``N`` rows back in the single-process order.
    """
    batch_size = batch_size or eval_batch_size(spec)
    shard = ctx.shard if ctx is not None else None
    if shard is not None and not ctx.is_main:
        progress = None
    logits, labels = [], []
    for x, y in bundle.batches(role, spec, batch_size=batch_size, progress=progress, shard=shard):
        logits.append(model(x).float())
        labels.append(y)
    if shard is None:
        return torch.cat(logits), torch.cat(labels)
    # A rank with no images (fewer images than ranks) sends None.
    local = (torch.cat(logits), torch.cat(labels)) if logits else None
    parts = all_gather_objects(local, ctx)
    return (
        interleave([p[0] if p else None for p in parts]),
        interleave([p[1] if p else None for p in parts]),
    )


def eval_batch_size(spec) -> int:
    """Evaluation batch: 256 small images, 32 photo-size ones (>= 128x128 pixels).

    At 224 px a batch of 256 is 154 MB of input, and a DataLoader keeps up to four batches in
    flight (2 per worker): 32 keeps the loader's memory at ~80 MB without slowing inference.
    """
    _, h, w = spec.input_size
    return 256 if h * w < 128 * 128 else 32


def accuracy(model, bundle: DataBundle, role: str, spec, **kw) -> float:
    """Top-1 accuracy (0-1) of ``model`` on ``role`` (``kw``: ``predict``'s options, ``ctx``)."""
    if isinstance(model, nn.Module):
        model.eval()
    logits, labels = predict(model, bundle, role, spec, **kw)
    return (logits.argmax(1) == labels).float().mean().item()


def file_size_mb(path: str | Path) -> float:
    """Size of an artifact on disk in MiB; an OpenVINO ``.xml`` counts with its ``.bin`` (the
    weights)."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size / 2**20


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` - the size of the saved artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size


def state_dict_size_mb(model: nn.Module) -> float:
    """MiB of ``torch.save(model.state_dict())`` - the size of the saved artifact."""
    return state_dict_bytes(model) / 2**20


def count_layers(model: nn.Module) -> int:
    """Number of quantizable modules (Linear/Conv)."""
    return sum(isinstance(m, QUANTIZABLE) for m in model.modules())


def threads() -> int:
    return torch.get_num_threads()


@torch.no_grad()
def latency_samples(
    fn: Callable[[torch.Tensor], object],
    example: torch.Tensor,
    *,
    warmup: int = 3,
    repeats: int = 10,
    min_seconds: float = 0.5,
) -> list[float]:
    """Wall times in ms per image of ``fn(example)`` after warm-up.

    Runs at least ``repeats`` times and at least ``min_seconds`` in all (at most 1000 runs).
    """
    for _ in range(warmup):
        fn(example)
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn(example)
        times.append((time.perf_counter() - t0) * 1000.0 / example.shape[0])
        if len(times) > 1000:
            break
    return times


def median_and_spread(samples: list[float]) -> tuple[float, float]:
    """``(median, interquartile range)`` of ``samples``."""
    if len(samples) < 2:
        return samples[0], 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return statistics.median(samples), q3 - q1


def example_batch(bundle: DataBundle, spec, batch: int) -> torch.Tensor:
    x, _ = next(bundle.batches("test", spec, batch_size=batch))
    if x.shape[0] < batch:  # tiny test sets: repeat to the batch size
        x = x.repeat((batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:batch]
    return x


def set_threads(n: int | None) -> int:
    """Use ``n`` intra-op threads (default: all cores); returns the count in effect."""
    if n:
        torch.set_num_threads(n)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()
