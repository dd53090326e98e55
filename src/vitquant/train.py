"""The training loop shared by ``vitquant train`` and QAT: resumable, atomic checkpoints.

Every epoch ends with a validation pass; the weights kept are those of the best validation epoch
(never chosen on test). A state file beside the checkpoint holds model, optimizer, scheduler, RNG
and history, so re-running the same command after an interruption continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.io import atomic_write
from vitquant.progress import track


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe."""

    epochs: int = 10
    lr: float = 0.05  # peak learning rate (cosine decay to 0 after a short warm-up)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: int = 128
    label_smoothing: float = 0.0
    augment: bool = True  # random crop + flip of 3-channel images
    warmup_epochs: float = 0.5
    seed: int = 0
    train_limit: int | None = None  # train on a subset of the fit images per epoch


@dataclass
class TrainState:
    epoch: int = 0  # epochs finished
    best_val: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    raise VitquantError(f"unknown optimizer {cfg.optimizer!r}: use sgd or adamw.")


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
    if warm <= 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm),
        ],
        milestones=[warm],
    )


def steps_per_epoch(bundle: DataBundle, cfg: TrainConfig) -> int:
    n = (
        len(bundle.fit_idx)
        if cfg.train_limit is None
        else min(cfg.train_limit, len(bundle.fit_idx))
    )
    return max(1, -(-n // cfg.batch_size))


def train_epoch(
    model: nn.Module,
    bundle: DataBundle,
    spec,
    opt: torch.optim.Optimizer,
    sched,
    cfg: TrainConfig,
    generator: torch.Generator,
    *,
    description: str = "train",
    train_mode: Callable[[nn.Module], None] | None = None,
) -> float:
    """One pass over (a ``train_limit`` subset of) the fit images; returns the mean loss."""
    if len(bundle.fit_idx) == 0:
        raise VitquantError(f"{bundle.name} has no training split to train on.")
    (train_mode or (lambda m: m.train()))(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    total, count = 0.0, 0
    batches = bundle.batches(
        "fit",
        spec,
        batch_size=cfg.batch_size,
        shuffle=True,
        augment=cfg.augment,
        generator=generator,
        limit=cfg.train_limit,
    )
    for x, y in track(batches, total=steps_per_epoch(bundle, cfg), description=description):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


def train(
    model: nn.Module,
    spec,
    bundle: DataBundle,
    cfg: TrainConfig,
    *,
    checkpoint: Path,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> TrainState:
    """Train ``model`` on ``bundle``'s fit images; keep the best-validation weights.

    Args:
        checkpoint: where the kept weights go (a plain state_dict, written atomically); the
            resumable state goes to ``<checkpoint>.state``.
        resume: continue from ``<checkpoint>.state`` when it exists and has the same recipe.
    """
    checkpoint = Path(checkpoint)
    state_path = checkpoint.with_name(checkpoint.name + ".state")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch(bundle, cfg))
    state = TrainState()
    if resume and state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved["config"] != asdict(cfg):
            raise VitquantError(
                f"{state_path} holds a run with another recipe ({saved['config']}); pass "
                "--restart to start over, or repeat the original options to resume."
            )
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        state = TrainState(**saved["state"])
        log(f"resuming {spec.name} after epoch {state.epoch}/{cfg.epochs}")

    best_weights = None
    while state.epoch < cfg.epochs:
        t0 = time.perf_counter()
        epoch = state.epoch + 1
        loss = train_epoch(
            model, bundle, spec, opt, sched, cfg, gen, description=f"epoch {epoch}/{cfg.epochs}"
        )
        val = accuracy(model, bundle, "val", spec)
        seconds = time.perf_counter() - t0
        state.epoch = epoch
        state.history.append({"epoch": epoch, "loss": loss, "val_acc": val, "seconds": seconds})
        log(f"epoch {epoch}/{cfg.epochs}: loss {loss:.4f}, val acc {val:.4f} ({seconds:.1f} s)")
        if val > state.best_val:
            state.best_val, state.best_epoch = val, epoch
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            atomic_write(checkpoint, lambda p, w=best_weights: torch.save(w, p))
        saved = {
            "config": asdict(cfg),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "generator": gen.get_state(),
            "state": asdict(state),
        }
        atomic_write(state_path, lambda p, s=saved: torch.save(s, p))
    if not checkpoint.exists():
        raise VitquantError(f"training produced no checkpoint at {checkpoint}.")
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return state
