"""The Typer application object every command module registers on."""

from __future__ import annotations

import typer
from rich.console import Console

from vitquant.cli.options import VerboseOpt

app = typer.Typer(
    name="vitquant",
    help="Why does my ViT lose accuracy when quantized, and what is the best int8 model I can get?"
    "\n\nEvery command writes DIR/<command>.json (see docs/results.md) under --out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help texts are plain: with rich markup, "[default: all]" in a help string was eaten.
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _options(verbose: VerboseOpt = False) -> None:
    # Options before the command name (`vitquant --verbose quantize ...`); each command takes
    # --verbose too. The option's callback does the work.
    pass
