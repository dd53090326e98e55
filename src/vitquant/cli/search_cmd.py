"""`vitquant search`: Optuna over QAT lr, momentum, weight decay (and epochs); resumable."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Annotated

import typer

from vitquant.cli.app import app, console
from vitquant.cli.common import model_and_data, prepare_out, save_result
from vitquant.cli.options import (
    PER_CHANNEL,
    QUANTIZER,
    SYMMETRIC_ACTIVATIONS,
    BatchOpt,
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
    ModelArg,
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
)
from vitquant.cli.qat_cmd import finish_qat, ignored_scope, qat_config
from vitquant.errors import VitquantError
from vitquant.evaluate import set_threads
from vitquant.quant.configs import check_backend, check_export


def _range(text: str | None, name: str, cast=float):
    if text is None:
        return None
    try:
        lo, hi = (cast(v) for v in text.split(":"))
    except ValueError as exc:
        raise VitquantError(f"--{name} takes LOW:HIGH (e.g. 1e-5:1e-2), got {text!r}.") from exc
    return (lo, hi)


@app.command("search")
def search_cmd(
    model: ModelArg,
    trials: Annotated[int, typer.Option(min=0, help="Finished trials the study should hold.")] = 10,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Study database URL, e.g. postgresql://user@host:5432/db to share a "
            "study between workers [default: sqlite:///DIR/search.db]."
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name [default: qat-<model>].")] = None,
    data: DataOpt = "digits",
    epochs: EpochsOpt = 2,
    search_epochs: Annotated[
        str | None, typer.Option(help="Also search the epochs, e.g. 1:4 (inclusive).")
    ] = None,
    lr_range: Annotated[str, typer.Option(help="Learning-rate range (log scale).")] = "1e-5:3e-2",
    momentum_range: Annotated[str, typer.Option(help="Momentum range.")] = "0.8:0.99",
    wd_range: Annotated[str, typer.Option(help="Weight-decay range (log scale).")] = "1e-6:1e-2",
    prune: Annotated[bool, typer.Option(help="Median pruning on per-epoch int8 val.")] = True,
    final: Annotated[
        bool, typer.Option(help="Retrain the best parameters and test them at the end.")
    ] = True,
    optimizer: OptimizerOpt = "sgd",
    batch_size: BatchOpt = 64,
    freeze_observers_after: FreezeObsOpt = None,
    freeze_bn_after: FreezeBnOpt = None,
    train_limit: TrainLimitOpt = None,
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
    """Optuna search over QAT lr, momentum, weight decay (and epochs) -> search.json.

    The objective is int8 accuracy on val (never test). Re-run the same command after an
    interruption to resume; point several workers at one --storage postgresql://... and --study
    to share the work. At the end the best parameters are retrained and tested (--final).
    """
    import os

    import optuna

    from vitquant.plots.qat import plot_study, plot_trial_epochs
    from vitquant.quant.qat import run_qat
    from vitquant.quant.search import (
        QATObjective,
        SearchConfig,
        SearchSpace,
        config_dict,
        open_study,
        run_search,
        sqlite_url,
        summarize,
    )

    t0 = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise VitquantError(
            "search runs one process per worker, not under torchrun: start several "
            "`vitquant search` workers on one --storage instead."
        )
    check_export(export, check_backend(quantizer))
    directory = prepare_out(out, "search", model, overwrite)
    set_threads(threads)
    space = SearchSpace(
        lr=_range(lr_range, "lr-range"),
        momentum=_range(momentum_range, "momentum-range"),
        weight_decay=_range(wd_range, "wd-range"),
        epochs=_range(search_epochs, "search-epochs", int),
    )
    scfg = SearchConfig(
        trials=trials,
        study=study or f"qat-{model.replace(':', '_')}",
        storage=storage or sqlite_url(directory / "search.db"),
        space=space,
        prune=prune,
        seed=seed,
    )
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
    base = qat_config(
        epochs=epochs,
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
    )
    scope = ignored_scope(loaded.model, ignore, ignore_type, ignore_file)
    searched = {"lr", "momentum", "weight_decay"} | ({"epochs"} if space.epochs else set())
    identity = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        "data": bundle.name,
        "n_val": len(bundle.val_idx),
        "n_calib": len(bundle.calib_idx),
        "seed": seed,
        "ignored": scope.modules,
        "space": asdict(space),
        "base": {k: v for k, v in base.to_dict().items() if k not in searched},
    }
    directory.mkdir(parents=True, exist_ok=True)
    opened = open_study(scfg, identity)
    console.print(
        f"study {scfg.study!r}: {len(opened.trials)} trial(s) stored; target {scfg.trials} finished"
    )

    objective = QATObjective(loaded.model, loaded.spec, bundle, base, ignore=scope.modules)
    worker = run_search(opened, scfg, objective, log=console.print)
    summary = summarize(opened)
    plots, notes = plot_study(opened, directory)
    if summary["trials"]:
        plots["trial_epochs"] = str(plot_trial_epochs(summary, directory / "search_epochs.png"))
    final_part = None
    if final and summary["best"] is not None:
        best = summary["best"]
        cfg = replace(base, **best["params"])
        console.print(
            f"retraining the best trial #{best['number']} ({best['params']}) and testing it"
        )
        result = run_qat(
            loaded.model, loaded.spec, bundle, cfg, ignore=scope.modules, log=console.print
        )
        final_part = finish_qat(
            loaded,
            bundle,
            cfg,
            result,
            directory,
            ignored=scope.modules,
            onnx=onnx,
            latency=latency,
            stem="search_best_int8",
            export=export,
        )
        final_part["trial"] = best["number"]
    elif final:
        notes.append("no COMPLETE trial: nothing to retrain")
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        **bundle.describe(),
        "search": config_dict(scfg),
        "base_config": base.to_dict(),
        "ignored": scope.modules,
        "worker": asdict(worker),
        **summary,
        "plots": plots,
        "notes": notes,
        "final": final_part,
        "seconds": time.perf_counter() - t0,
        "optuna": optuna.__version__,
    }
    path = save_result(directory, "search", payload)
    best = summary["best"]
    tail = f"best trial #{best['number']}: int8 val {best['value']:.4f}" if best else "no best"
    if final_part:
        tail += f"; retrained int8 test accuracy [bold]{final_part['test_acc']:.4f}[/]"
    console.print(f"{summary['counts']}; {tail}; wrote {path}")
