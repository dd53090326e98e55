"""`vitquant train`: train or fine-tune any registry model (resumable)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from vitquant.cli.app import app, console
from vitquant.cli.common import prepare_out, print_notes, save_result
from vitquant.cli.options import (
    CheckpointOpt,
    DataOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    OverwriteOpt,
    SeedOpt,
    ThreadsOpt,
    TrainLimitOpt,
    ValOpt,
    VerboseOpt,
)
from vitquant.data import check_compatible, load_data
from vitquant.evaluate import accuracy, set_threads
from vitquant.paths import cache_dir
from vitquant.prepare import recipe
from vitquant.registry import get_spec, load_model
from vitquant.train import train


def default_save_path(model: str) -> Path:
    return cache_dir("checkpoints") / f"{model.replace(':', '_')}.pt"


@app.command("train")
def train_cmd(
    model: ModelArg,
    data: DataOpt = "digits",
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs [default: the model's recipe].")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate [default: the model's recipe].")
    ] = None,
    momentum: Annotated[
        float | None, typer.Option(help="SGD momentum [default: the model's recipe].")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Weight decay [default: the model's recipe].")
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="sgd or adamw [default: the model's recipe].")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Batch size [default: the model's recipe].")
    ] = None,
    train_limit: TrainLimitOpt = None,
    finetune: Annotated[
        bool, typer.Option(help="Start from the checkpoint (--checkpoint or the registered one).")
    ] = False,
    checkpoint: CheckpointOpt = None,
    save: Annotated[
        Path | None,
        typer.Option(
            help="Where the best-validation weights go [default: the user cache dir, "
            "where the registry finds digits models]."
        ),
    ] = None,
    restart: Annotated[bool, typer.Option(help="Ignore a saved state and start over.")] = False,
    num_classes: NumClassesOpt = None,
    val: ValOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = True,
    verbose: VerboseOpt = False,
) -> None:
    """Train (from scratch, or --finetune) keeping the best validation epoch -> train.json.

    Re-running the same command after an interruption resumes from the last finished epoch.
    """
    directory = prepare_out(out, "train", model, overwrite)
    set_threads(threads)
    bundle = load_data(data, val=val, calib=0, seed=seed)
    print_notes(bundle)
    spec = get_spec(model, num_classes=num_classes or len(bundle.classes))
    check_compatible(bundle, spec)
    if finetune:
        net = load_model(model, checkpoint=checkpoint, num_classes=spec.num_classes).model
    else:
        net = load_model(model, random_weights=True, num_classes=spec.num_classes).model
    cfg = recipe(
        spec,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        optimizer=optimizer,
        batch_size=batch_size,
        train_limit=train_limit,
        seed=seed,
    )
    save_path = save or default_save_path(model)
    if restart:
        save_path.with_name(save_path.name + ".state").unlink(missing_ok=True)
    console.print(f"training {model} on {bundle.name}: {bundle.sizes()} ({cfg})")
    state = train(net, spec, bundle, cfg, checkpoint=save_path, log=console.print)
    test_acc = accuracy(net, bundle, "test", spec, progress="test")
    payload = {
        "model": model,
        **bundle.describe(),
        "config": asdict(cfg),
        "checkpoint": str(save_path),
        "best_epoch": state.best_epoch,
        "best_val_acc": state.best_val,
        "test_acc": test_acc,
        "history": state.history,
        "seconds": sum(h["seconds"] for h in state.history),
    }
    path = save_result(directory, "train", payload)
    console.print(
        f"kept epoch {state.best_epoch} (val {state.best_val:.4f}); test accuracy "
        f"[bold]{test_acc:.4f}[/]; weights: {save_path}; wrote {path}"
    )
