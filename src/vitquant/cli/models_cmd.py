"""`vitquant models` and `vitquant layers`."""

from __future__ import annotations

from rich.table import Table

from vitquant.cli.app import app, console
from vitquant.cli.common import (
    CheckpointOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    OverwriteOpt,
    prepare_out,
    save_result,
)
from vitquant.layers import layer_table
from vitquant.registry import get_spec, list_specs


@app.command()
def models(out: OutOpt = None, overwrite: OverwriteOpt = True) -> None:
    """List the registered models (plus any timm model as timm:<name>)."""
    rows = []
    table = Table(title="vitquant models (and timm:<any timm name>)")
    for col in ("name", "family", "input", "classes", "checkpoint", "description"):
        table.add_column(col)
    for spec in list_specs():
        path = spec.default_checkpoint_path()
        found = bool(path and path.is_file())
        rows.append({
            "name": spec.name, "family": spec.family, "input_size": list(spec.input_size),
            "mean": list(spec.mean), "std": list(spec.std), "classes": list(spec.classes or []),
            "checkpoint": str(path) if path else None, "checkpoint_found": found,
            "description": spec.description,
        })  # fmt: skip
        table.add_row(
            spec.name, spec.family, "x".join(map(str, spec.input_size)),
            str(spec.num_classes),
            (path.name if found else f"[red]missing[/] {path.name}") if path else "-",
            spec.description,
        )  # fmt: skip
    console.print(table)
    if out is not None:
        directory = prepare_out(out, "models", "all", overwrite)
        save_result(directory, "models", {"models": rows})


@app.command()
def layers(
    model: ModelArg,
    num_classes: NumClassesOpt = None,
    checkpoint: CheckpointOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """List module names, types and parameter counts - the names ignore lists take."""
    spec = get_spec(model, num_classes=num_classes)
    module = spec.build(spec.num_classes or 1000)
    rows = layer_table(module)
    table = Table(title=f"{model}: {len(rows)} modules")
    for col in ("name", "type", "params", "quantizable"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in rows:
        table.add_row(r["name"], r["type"], f"{r['params']:,}", "yes" if r["quantizable"] else "")
    console.print(table)
    if out is not None:
        directory = prepare_out(out, "layers", model, overwrite)
        save_result(directory, "layers", {"model": model, "layers": rows})
