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
    train_cmd,
)
from vitquant.cli.app import app, err_console
from vitquant.errors import VitquantError


def main() -> None:
    try:
        app()
    except VitquantError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
