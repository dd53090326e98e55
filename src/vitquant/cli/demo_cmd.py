"""`vitquant demo`: the embedded default run (digits), what `make demo` calls."""

from __future__ import annotations

from rich.table import Table

from vitquant.cli.app import app, console
from vitquant.cli.common import OutOpt, OverwriteOpt, prepare_out, save_result
from vitquant.data import load_data
from vitquant.evaluate import accuracy, count_layers, state_dict_size_mb
from vitquant.prepare import ensure_trained
from vitquant.registry import load_model
from vitquant.results import ResultRow

DEMO_MODELS = ("digits_vit", "digits_cnn")


@app.command()
def demo(out: OutOpt = None, overwrite: OverwriteOpt = True) -> None:
    """Train the digits models if not cached, then evaluate them -> DIR/demo.json."""
    directory = prepare_out(out, "demo", "digits", overwrite)
    bundle = load_data("digits")
    rows = []
    for name in DEMO_MODELS:
        ensure_trained(name, log=console.print)
        loaded = load_model(name)
        acc = accuracy(loaded.model, bundle, "test", loaded.spec)
        rows.append(ResultRow(
            variant="fp32", backend="pytorch", accuracy=acc, n=len(bundle.test_idx),
            float_layers=count_layers(loaded.model), size_mb=state_dict_size_mb(loaded.model),
            extra={"model": name, "checkpoint": loaded.checkpoint},
        ))  # fmt: skip
    table = Table(title="demo: digits models (fp32, test split)")
    for col in ("model", "accuracy", "size MiB", "layers"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.extra["model"], f"{r.accuracy:.4f}", f"{r.size_mb:.3f}", str(r.float_layers)
        )
    console.print(table)
    path = save_result(
        directory, "demo", {**bundle.describe(), "results": [r.to_dict() for r in rows]}
    )
    console.print(f"wrote {path}")
