"""`vitquant qat`: quantization-aware training; and the helpers `vitquant search` shares."""

from __future__ import annotations

import time
from pathlib import Path

from vitquant.cli.app import app, console
from vitquant.cli.common import model_and_data, prepare_out, save_result
from vitquant.cli.options import (
    PER_CHANNEL,
    QUANTIZER,
    SYMMETRIC_ACTIVATIONS,
    ABitsOpt,
    BatchOpt,
    BitsRuleOpt,
    CalibOpt,
    CheckpointOpt,
    DataOpt,
    EpochsOpt,
    ExportOpt,
    FreezeBnOpt,
    FreezeObsOpt,
    IgnoreFileOpt,
    IgnoreOpt,
    IgnoreTypeOpt,
    LatencyOpt,
    LimitOpt,
    LrOpt,
    ModelArg,
    MomentumOpt,
    NumClassesOpt,
    OnnxOpt,
    OptimizerOpt,
    OutOpt,
    OverwriteOpt,
    PerChannelOpt,
    PretrainedOpt,
    QuantizerOpt,
    RandomOpt,
    SeedOpt,
    SymActOpt,
    ThreadsOpt,
    TrainLimitOpt,
    ValOpt,
    VerboseOpt,
    WBitsOpt,
    WdOpt,
)
from vitquant.evaluate import set_threads
from vitquant.quant.configs import check_backend, check_export


def qat_config(**kw):
    """The ``QATConfig`` of the options (imported late: ``quant.qat`` pulls in torchao)."""
    from vitquant.quant.qat import QATConfig

    return QATConfig(**kw)


def ignored_scope(model, ignore, ignore_type, ignore_file):
    """The ``--ignore*`` options resolved on ``model`` (an entry that matches nothing fails)."""
    from vitquant.quant.scope import IgnoreScope, resolve_modules

    scope = IgnoreScope.from_cli(ignore or [], ignore_type or [], ignore_file)
    return resolve_modules(model, scope)


def check_low_bit_export(wbits: int, abits: int, bits, export: str) -> bool:
    """Whether the bits options ask for a low-bit (simulated) model; refuses ``--export pte``
    with one (no runtime executes it) before any data is loaded or trained."""
    from vitquant.errors import VitquantError
    from vitquant.quant.lowbit.bits import BitSetting, BitsPlan
    from vitquant.quant.lowbit.narrow import is_low_bit

    low = is_low_bit(BitsPlan.from_texts(BitSetting(wbits, abits), bits or []))
    if low and export != "none":
        raise VitquantError(
            f"--export {export} lowers int8 kernels, but W{wbits}A{abits} (or a --bits rule) "
            "is below 8 bits and only simulated: drop --export, or train at 8 bits."
        )
    return low


def finish_qat(
    loaded, bundle, cfg, result, directory: Path, *, ignored, onnx, latency, stem, export="none"
):
    """Plot, save and test the kept model; the part of qat.json / search.json it fills.

    A low-bit ``cfg`` is only simulated: no ONNX / ``.pte`` export (``DeployOptions.bits``).
    """
    from vitquant.plots.qat import plot_qat_history
    from vitquant.quant.qat import DeployOptions, deploy_and_report

    directory.mkdir(parents=True, exist_ok=True)
    report = deploy_and_report(
        loaded.model,
        loaded.spec,
        bundle,
        result,
        directory,
        ignored=ignored,
        options=DeployOptions(
            onnx=onnx and not cfg.low_bit,
            latency=latency,
            stem=stem,
            backend=cfg.backend,
            export=export,
            bits=cfg.bits_label if cfg.low_bit else None,
        ),
        log=console.print,
    )
    plot = plot_qat_history(
        result.history, directory / f"{stem}_accuracy.png", best_epoch=result.best_epoch
    )
    return {
        "config": cfg.to_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val,
        "diverged": result.diverged,
        "world_size": result.world_size,
        "qat_seconds": result.seconds,
        **report,
        "plots": {"accuracy_per_epoch": str(plot)},
    }


@app.command("qat")
def qat_cmd(
    model: ModelArg,
    data: DataOpt = "digits",
    epochs: EpochsOpt = 3,
    lr: LrOpt = 1e-3,
    momentum: MomentumOpt = 0.9,
    weight_decay: WdOpt = 1e-4,
    optimizer: OptimizerOpt = "sgd",
    batch_size: BatchOpt = 64,
    freeze_observers_after: FreezeObsOpt = None,
    freeze_bn_after: FreezeBnOpt = None,
    train_limit: TrainLimitOpt = None,
    wbits: WBitsOpt = 8,
    abits: ABitsOpt = 8,
    bits: BitsRuleOpt = None,
    ignore: IgnoreOpt = None,
    ignore_type: IgnoreTypeOpt = None,
    ignore_file: IgnoreFileOpt = None,
    quantizer: QuantizerOpt = QUANTIZER,
    export: ExportOpt = "none",
    per_channel: PerChannelOpt = PER_CHANNEL,
    symmetric_activations: SymActOpt = SYMMETRIC_ACTIVATIONS,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomOpt = False,
    num_classes: NumClassesOpt = None,
    calib: CalibOpt = 256,
    val: ValOpt = None,
    limit: LimitOpt = None,
    onnx: OnnxOpt = True,
    latency: LatencyOpt = True,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Quantization-aware training (pt2e fake quant); keeps the best int8 val epoch -> qat.json.

    Every epoch a converted copy is evaluated on val; the kept model is tested, saved as .pt2 and
    .onnx, and reported as results rows. Under `torchrun --nproc-per-node N` it trains with
    DistributedDataParallel (gloo on CPU, nccl with CUDA); rank 0 evaluates and writes.

    With --wbits/--abits below 8 (or --bits rules) the fake-quant ranges narrow to that many
    bits; the kept model is simulated (no CPU kernels), so it is neither timed nor exported.
    """
    from vitquant.quant.qat import dist_context, run_qat

    t0 = time.perf_counter()
    check_export(export, check_backend(quantizer))  # before any data or training
    low_bit = check_low_bit_export(wbits, abits, bits, export)
    directory = prepare_out(out, "qat", model, overwrite)
    ctx = dist_context()
    if ctx.world == 1:
        set_threads(threads)
    loaded, bundle = model_and_data(
        model,
        data=data,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_weights=random_weights,
        num_classes=num_classes,
        calib=calib,
        val=val,
        limit=limit,
        seed=seed,
    )
    cfg = qat_config(
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        optimizer=optimizer,
        batch_size=batch_size,
        freeze_observers_after=freeze_observers_after,
        freeze_bn_after=freeze_bn_after,
        train_limit=train_limit,
        calib=calib or None,
        per_channel=per_channel,
        symmetric_activations=symmetric_activations,
        seed=seed,
        backend=quantizer,
        wbits=wbits,
        abits=abits,
        bits=tuple(bits or ()),
    )
    scope = ignored_scope(loaded.model, ignore, ignore_type, ignore_file)
    if low_bit and onnx and ctx.is_main:
        console.print(f"{cfg.bits_label} is simulated: no ONNX export (as with --no-onnx)")
    say = console.print if ctx.is_main else (lambda *a, **k: None)
    say(f"QAT of {model} on {bundle.name} {bundle.sizes()}: {cfg}")
    result = run_qat(loaded.model, loaded.spec, bundle, cfg, ignore=scope.modules, log=say)
    if not ctx.is_main:
        return
    part = finish_qat(
        loaded,
        bundle,
        cfg,
        result,
        directory,
        ignored=scope.modules,
        onnx=onnx,
        latency=latency,
        stem="qat_int8",
        export=export,
    )
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        **bundle.describe(),
        "ignored": scope.modules,
        "ignore_notes": scope.notes,
        **part,
        "seconds": time.perf_counter() - t0,
    }
    path = save_result(directory, "qat", payload)
    console.print(
        f"kept epoch {result.best_epoch} (int8 val {result.best_val:.4f}); int8 test accuracy "
        f"[bold]{part['test_acc']:.4f}[/] vs fp32 {part['fp32_test_acc']:.4f}; wrote {path}"
    )
