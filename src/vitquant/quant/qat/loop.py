"""The QAT loop: initialise the observers, fine-tune, evaluate a converted copy every epoch.

Before the first epoch the fake-quant observers are initialised on calibration images
(``calibrate``), so epoch 0 of the history is plain static PTQ with the same quantizer. After
every epoch a *copy* is converted to the int8 reference model and evaluated on the validation
images; the kept weights are those of the best validation epoch (epoch 0 included), never chosen
on test.

Freezing, counted in finished epochs:

- ``freeze_observers_after=E1``: from epoch ``E1 + 1`` on the observers stop updating, so the
  scales and zero points stay fixed while the weights keep learning;
- ``freeze_bn_after=E2``: from epoch ``E2 + 1`` on BatchNorm uses and keeps its running
  statistics (the ``training`` flag of the graph's batch_norm nodes is set to False).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the prepared graph is wrapped in
DistributedDataParallel (gloo on CPU, nccl with CUDA); see ``vitquant.quant.qat.distributed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.distributed import dist_context
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.progress import track
from vitquant.quant.qat.config import QATConfig, QATResult
from vitquant.quant.qat.distributed import (
    broadcast_buffers,
    broadcast_object,
    fit_batches,
    steps_per_epoch,
)
from vitquant.quant.qat.graph import (
    convert_copy,
    eval_copy,
    fake_quant_modules,
    freeze_bn,
    freeze_observers,
    prepare_qat,
    set_graph_mode,
)
from vitquant.train import make_optimizer, make_scheduler


@torch.no_grad()
def calibrate(prepared: torch.fx.GraphModule, bundle: DataBundle, spec, cfg: QATConfig) -> int:
    """Initialise the observers on ``calib`` images (BN in inference mode); returns images used."""
    role = "calib" if len(bundle.calib_idx) else "fit"
    limit = cfg.calib if cfg.calib is not None else (None if role == "calib" else 256)
    set_graph_mode(prepared, training=False)
    seen = 0
    for x, _ in bundle.batches(role, spec, batch_size=64, limit=limit, progress="calibrating"):
        prepared(x.to(_device(prepared)))
        seen += len(x)
    set_graph_mode(prepared, training=True)
    return seen


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def run_qat(
    model: nn.Module,
    spec,
    bundle: DataBundle,
    cfg: QATConfig,
    *,
    ignore: Sequence[str] = (),
    on_epoch: Callable[[int, dict, nn.Module], None] | None = None,
    log: Callable[[str], None] = print,
) -> QATResult:
    """Fine-tune ``model`` with fake quantization and keep the best int8-validation epoch.

    Args:
        model: the float model (not modified).
        spec: its ``ModelSpec``.
        bundle: data; trains on ``fit``, initialises observers on ``calib``, selects on ``val``.
        cfg: the recipe.
        ignore: quantizable module names to keep in float.
        on_epoch: called as ``on_epoch(epoch, record, prepared)`` after every epoch's
            evaluation (epoch 0 included), on every rank; Optuna reports and prunes here, and an
            exception stops the run.
        log: where progress lines go (rank 0 only).

    Returns:
        The ``QATResult``; ``converted`` is the best epoch's int8 model (rank 0).
    """
    if len(bundle.fit_idx) == 0:
        raise VitquantError(
            f"{bundle.name} has no training split; QAT needs one (a folder with train/ and test/)."
        )
    ctx = dist_context()
    say = log if ctx.is_main else (lambda s: None)
    torch.manual_seed(cfg.seed)
    example, _ = next(bundle.batches("fit", spec, batch_size=2))
    prepared = prepare_qat(model, example, cfg, ignore)
    n_bn = set_graph_mode(prepared, training=True)["batch_norm"]
    n_calib = calibrate(prepared, bundle, spec, cfg)
    prepared.to(ctx.device)
    net: nn.Module = prepared
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(prepared, device_ids=ids)  # buffers synced from rank 0
    broadcast_buffers(prepared, ctx)

    tcfg = cfg.train_config()
    opt = make_optimizer(prepared, tcfg)
    steps = steps_per_epoch(len(bundle.fit_idx), cfg, ctx.world)
    sched = make_scheduler(opt, tcfg, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    result = QATResult(world_size=ctx.world)
    say(
        f"QAT: {len(fake_quant_modules(prepared))} fake-quant modules, {n_bn} BatchNorm nodes, "
        f"observers initialised on {n_calib} images; {steps} steps/epoch on {ctx.world} "
        "process(es)"
    )

    best_state = None
    observers_frozen = bn_frozen = False
    for epoch in range(0, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss = None
        if epoch > 0:
            if cfg.freeze_observers_after is not None and epoch > cfg.freeze_observers_after:
                if not observers_frozen:
                    freeze_observers(prepared)
                    observers_frozen = True
                    say(f"epoch {epoch}: observers frozen")
            if cfg.freeze_bn_after is not None and epoch > cfg.freeze_bn_after and not bn_frozen:
                freeze_bn(prepared)
                bn_frozen = True
                if n_bn:
                    say(f"epoch {epoch}: BatchNorm statistics frozen")
            loss = _train_epoch(
                net, prepared, bundle, spec, cfg, epoch, ctx, opt, sched, loss_fn, steps
            )
            broadcast_buffers(prepared, ctx)
        record = {
            "epoch": epoch,
            "loss": loss,
            "observers_frozen": observers_frozen,
            "bn_frozen": bn_frozen,
        }
        if ctx.is_main:
            record["float_val_acc"] = accuracy(
                eval_copy(prepared, fake_quant=False),
                bundle,
                "val",
                spec,
                batch_size=cfg.eval_batch,
            )
            record["int8_val_acc"] = accuracy(
                convert_copy(prepared), bundle, "val", spec, batch_size=cfg.eval_batch
            )
        record = broadcast_object(record, ctx)
        record["seconds"] = time.perf_counter() - t0
        result.history.append(record)
        loss_txt = "-" if loss is None else f"{loss:.4f}"
        say(
            f"epoch {epoch}/{cfg.epochs}: loss {loss_txt}, val float "
            f"{record['float_val_acc']:.4f}, int8 {record['int8_val_acc']:.4f} "
            f"({record['seconds']:.1f} s)"
        )
        if record["int8_val_acc"] > result.best_val:
            result.best_val, result.best_epoch = record["int8_val_acc"], epoch
            best_state = {k: v.detach().cpu().clone() for k, v in prepared.state_dict().items()}
        if loss is not None and not math.isfinite(loss):
            result.diverged = True
            say(f"epoch {epoch}: the loss is not finite; stopping (lower --lr)")
            break
        if on_epoch is not None:
            on_epoch(epoch, record, prepared)

    prepared.load_state_dict(best_state)
    result.prepared = prepared.cpu()
    if ctx.is_main:
        result.converted = convert_copy(prepared)
    return result


def _train_epoch(net, prepared, bundle, spec, cfg, epoch, ctx, opt, sched, loss_fn, steps) -> float:
    """One epoch of this rank's shard; returns the mean loss over all ranks."""
    total = torch.zeros(2, dtype=torch.float64)
    batches = fit_batches(bundle, spec, cfg, epoch, ctx)
    desc = f"QAT epoch {epoch}/{cfg.epochs}"
    for x, y in track(batches, total=steps, description=desc) if ctx.is_main else batches:
        x, y = x.to(ctx.device), y.to(ctx.device)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(prepared.parameters(), 5.0)
        opt.step()
        sched.step()
        total += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
        if ctx.world == 1 and not math.isfinite(loss.item()):
            break  # under DDP every rank must take the same number of steps
    if ctx.world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()
