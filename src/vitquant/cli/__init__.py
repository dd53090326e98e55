"""The ``vitquant`` command line: parses options, builds configs, calls the library, prints tables.

Each command lives in its own module and registers itself on ``app``; this file lists them.
"""

from __future__ import annotations

import sys

from vitquant.cli import (  # noqa: F401  (each module registers its commands)
    analyze_cmd,
    compare_cmd,
    demo_cmd,
    eval_cmd,
    models_cmd,
    pipeline_cmd,
    qat_cmd,
    quantize_cmd,
    report_cmd,
    search_cmd,
    train_cmd,
)
from vitquant.cli.app import app, err_console
from vitquant.errors import VitquantError
from vitquant.quiet import apply, verbose_requested


def main() -> None:
    # Decided before any command imports torchao/ONNX Runtime (some warn on import); Typer's
    # --verbose callbacks confirm it once the command line is parsed.
    apply(verbose=verbose_requested(sys.argv[1:]))
    try:
        app()
    except VitquantError as exc:
        # soft_wrap: one line however long, so `2>err.txt` and grep see the whole message.
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
