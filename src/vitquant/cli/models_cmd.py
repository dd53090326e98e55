"""`vitquant models` and `vitquant layers`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vitquant.cli.app import app, console
from vitquant.cli.common import prepare_out, save_result
from vitquant.cli.options import ModelArg, NumClassesOpt, OutOpt, OverwriteOpt, VerboseOpt
from vitquant.layers import layer_table
from vitquant.registry import get_spec, list_specs, load_model


@app.command()
def models(
    out: Annotated[
        Path | None, typer.Option(help="Also write DIR/models.json [default: print only].")
    ] = None,
    overwrite: OverwriteOpt = True,
    verbose: VerboseOpt = False,
) -> None:
    """List the registered models (plus any timm model as timm:<name>)."""
    rows = []
    table = Table(title="vitquant models (and timm:<any timm name>)")
    for col in ("name", "family", "input", "classes", "checkpoint", "description"):
        table.add_column(col)
    for spec in list_specs():
        path = spec.default_checkpoint_path()
        found = bool(path and path.is_file())
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "input_size": list(spec.input_size),
                "mean": list(spec.mean),
                "std": list(spec.std),
                "classes": list(spec.classes or []),
                "checkpoint": str(path) if path else None,
                "checkpoint_found": found,
                "description": spec.description,
            }
        )
        table.add_row(
            spec.name,
            spec.family,
            "x".join(map(str, spec.input_size)),
            str(spec.num_classes),
            (path.name if found else f"[red]missing[/] {path.name}") if path else "-",
            spec.description,
        )
    console.print(table)
    if out is not None:
        directory = prepare_out(out, "models", "all", overwrite)
        save_result(directory, "models", {"models": rows})


@app.command()
def layers(
    model: ModelArg,
    num_classes: NumClassesOpt = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Load this checkpoint (state_dict) strictly, so a file that does not fit the "
            "model is refused [default: none, the architecture with random weights]."
        ),
    ] = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """List module names, types and parameter counts - the names ignore lists take."""
    directory = prepare_out(out, "layers", model, overwrite) if out is not None else None
    if checkpoint is not None:
        loaded = load_model(model, checkpoint=checkpoint, num_classes=num_classes)
        module, weights = loaded.model, loaded.checkpoint
    else:
        spec = get_spec(model, num_classes=num_classes)
        module, weights = spec.build(spec.num_classes or 1000), None
    rows = layer_table(module)
    table = Table(title=f"{model}: {len(rows)} modules")
    table.caption = f"weights: {weights}" if weights else "weights: none (architecture only)"
    for col in ("name", "type", "params", "quantizable"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in rows:
        table.add_row(r["name"], r["type"], f"{r['params']:,}", "yes" if r["quantizable"] else "")
    console.print(table)
    if weights:
        console.print(
            f"checkpoint {weights} loaded (strict: every tensor fits)",
            highlight=False,
            soft_wrap=True,
        )
    if directory is not None:
        save_result(directory, "layers", {"model": model, "checkpoint": weights, "layers": rows})
