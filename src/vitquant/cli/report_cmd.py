"""`vitquant report DIR`: one self-contained HTML file of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitquant.cli.app import app, console
from vitquant.cli.options import VerboseOpt
from vitquant.errors import VitquantError
from vitquant.report.html import build_report


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (e.g. runs/demo) to summarise.")],
    verbose: VerboseOpt = False,
) -> None:
    """Write DIR/report.html (images embedded, no network needed) and DIR/report.json."""
    if not run_dir.is_dir():
        raise VitquantError(f"{run_dir} is not a folder; pass the --out folder of a run.")
    path, summary = build_report(run_dir)
    console.print(f"report with {summary['n_plots']} plots: [bold]{path}[/]")
