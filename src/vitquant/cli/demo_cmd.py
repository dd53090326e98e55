"""`vitquant demo`: the embedded default run on digits, what `make demo` calls.

Trains the digits models if they are not cached, then runs the pipeline on ``digits_vit``,
compares it with ``digits_cnn``, takes ``digits_vit`` down the edge path (ExecuTorch's XNNPACK
quantizer, ``.pte`` programs run by ExecuTorch), runs the pipeline once more where a ViT really
loses accuracy - the reference CIFAR-10 ViT at W4A4 with its attention matmuls quantized, on
subsets of CIFAR-10 - so the ViT-aware methods win it back (the four a full ``vit-methods``
step chose on val: rotate, twin-gelu, log2-softmax and gptq; naming them keeps the demo within
five minutes), and writes the HTML report. Each
step runs as its own ``vitquant`` command so the report shows the exact command behind every
figure.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from vitquant.cli.app import app, console
from vitquant.cli.options import VerboseOpt
from vitquant.errors import VitquantError
from vitquant.prepare import ensure_trained

DEMO_MODELS = ("digits_vit", "digits_cnn")


def _steps(out: Path) -> list[list[str]]:
    return [
        [
            "pipeline",
            "digits_vit",
            "--data",
            "digits",
            "--max-drop",
            "0.5",
            "--trials",
            "2",
            "--qat-epochs",
            "2",
            "--out",
            str(out / "pipeline"),
            "--overwrite",
        ],
        [
            "compare",
            "digits_vit",
            "digits_cnn",
            "--data",
            "digits",
            "--out",
            str(out / "compare"),
            "--overwrite",
        ],
        [
            "quantize",
            "digits_vit",
            "--data",
            "digits",
            "--method",
            "static",
            "--quantizer",
            "xnnpack",
            "--export",
            "pte",
            "--ignore",
            "auto",
            "--max-drop",
            "0.5",
            "--no-onnx",
            "--out",
            str(out / "edge"),
            "--overwrite",
        ],
        [
            "pipeline",
            "cifar_vit",
            "--data",
            "cifar10",
            "--wbits",
            "4",
            "--abits",
            "4",
            "--quantize-attention",
            "--vit-methods",
            "rotate,twin-gelu,log2-softmax,gptq",
            "--calib",
            "128",
            "--val",
            "300",
            "--limit",
            "500",
            "--stats-images",
            "128",
            "--max-drop",
            "2.0",
            "--no-qat",
            "--out",
            str(out / "lowbit"),
            "--overwrite",
        ],
        ["report", str(out)],
    ]


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Output folder [default: runs/demo].")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Digits end to end: train (if needed) -> pipeline -> compare -> edge (.pte), then the
    CIFAR-10 ViT at W4A4 with quantized attention (loss and ViT-aware recovery) -> report.html."""
    out = out or Path("runs") / "demo"
    start = time.perf_counter()
    for name in DEMO_MODELS:
        ensure_trained(name, log=console.print)
    for step in _steps(out):
        console.rule(f"vitquant {' '.join(step[:2])}")
        proc = subprocess.run([sys.executable, "-m", "vitquant", *step])
        if proc.returncode != 0:
            raise VitquantError(
                f"demo step `vitquant {' '.join(step)}` failed "
                f"(exit {proc.returncode}); see the messages above."
            )
    minutes = (time.perf_counter() - start) / 60
    console.print(f"demo finished in {minutes:.1f} min; report: [bold]{out / 'report.html'}[/]")
