"""Options shared by every command, and the small helpers that turn them into library objects."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from vitquant.data import DataBundle, check_compatible, load_data
from vitquant.errors import HeadMismatchError
from vitquant.io import check_writable, write_json
from vitquant.quiet import apply, verbose_requested
from vitquant.registry import LoadedModel, load_model


def apply_verbosity(verbose: bool) -> bool:
    """``--verbose``'s callback: third-party warnings and log lines are hidden unless asked."""
    apply(verbose=verbose or verbose_requested())
    return verbose


VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Show third-party warnings and log lines (torch, inductor, ONNX Runtime), hidden "
        "by default (also VITQUANT_VERBOSE=1).",
        callback=apply_verbosity,
        is_eager=True,
    ),
]
ModelArg = Annotated[
    str,
    typer.Argument(
        help="Registry name (see `vitquant models`) or timm:<name>, "
        "e.g. timm:deit_small_patch16_224."
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(help="Checkpoint file (state_dict); default: the model's registered checkpoint."),
]
PretrainedOpt = Annotated[
    bool, typer.Option(help="timm:<name> only: download timm's pretrained weights (online).")
]
RandomOpt = Annotated[
    bool,
    typer.Option(help="Keep random weights on purpose (architecture analysis only)."),
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="timm:<name> only: classifier size (default: the number of data classes)."
    ),
]
DataOpt = Annotated[
    str,
    typer.Option(help="digits (embedded), cifar10 ($VITQUANT_ASSETS), or an ImageFolder path."),
]
CalibOpt = Annotated[
    int, typer.Option(min=0, help="Calibration images (from train, disjoint from val).")
]
ValOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Validation images from train, used for every choice [default: "
        "min(1000, 15% of train)].",
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option(min=1, help="Stratified subset of the test split [default: all].")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of every data subset.")]
OutOpt = Annotated[
    Path | None, typer.Option(help="Output folder [default: runs/<command>/<model>].")
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing result file in --out.")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads [default: all cores].")]
QuantizerOpt = Annotated[
    str,
    typer.Option(
        "--quantizer",
        help="pt2e quantizer: x86 (torchao X86InductorQuantizer, uint8 activations, inductor "
        "int8 kernels) or xnnpack (ExecuTorch XNNPACKQuantizer, symmetric int8 config, the "
        "edge/mobile path).",
    ),
]
ExportOpt = Annotated[
    str,
    typer.Option(
        "--export",
        help="pte: also lower each static/QAT int8 model to an ExecuTorch XNNPACK program "
        "(.pte), run it with ExecuTorch's runtime and add its row (needs --quantizer xnnpack). "
        "none: no extra artifact.",
    ),
]
ObserverOpt = Annotated[
    str | None,
    typer.Option(
        help="Activation calibration: minmax, moving_average, histogram, percentile "
        "[default: minmax for x86, histogram for xnnpack]; ORT mirrors it with "
        "MinMax/Entropy/Percentile.",
    ),
]


def out_dir(out: Path | None, command: str, model: str) -> Path:
    if out is not None:
        return out
    return Path("runs") / command / model.replace(":", "_").replace("/", "_")


def prepare_out(out: Path | None, command: str, model: str, overwrite: bool) -> Path:
    """The output folder, after checking ``DIR/<command>.json`` may be written."""
    directory = out_dir(out, command, model)
    check_writable(directory / f"{command}.json", overwrite=overwrite)
    return directory


def model_and_data(
    model: str,
    *,
    data: str,
    checkpoint: Path | None,
    pretrained: bool,
    random_weights: bool,
    num_classes: int | None,
    calib: int,
    val: int | None,
    limit: int | None,
    seed: int,
) -> tuple[LoadedModel, DataBundle]:
    """The model (weights loaded strictly) and the data bundle, checked against each other.

    An embedded digits model without a cached checkpoint is trained first (about 20 s), unless
    the weights come from elsewhere (``checkpoint``, ``pretrained``, ``random_weights``).
    """
    bundle = load_data(data, calib=calib, val=val, limit=limit, seed=seed)
    if model.startswith("timm:") and num_classes is None and not pretrained:
        num_classes = len(bundle.classes)
    ensure_weights(
        model, checkpoint=checkpoint, pretrained=pretrained, random_weights=random_weights
    )
    try:
        loaded = load_model(
            model,
            checkpoint=checkpoint,
            pretrained=pretrained,
            random_weights=random_weights,
            num_classes=num_classes,
        )
    except HeadMismatchError as exc:
        raise exc.for_data(len(bundle.classes)) from None
    check_compatible(bundle, loaded.spec)
    print_notes(bundle)
    return loaded, bundle


def print_notes(bundle: DataBundle) -> None:
    """Say what the data set-up changed (a clipped --calib, a folder with one split, ...); the
    same notes are in every result JSON (``notes``). Rank 0 only under torchrun."""
    import os

    from vitquant.cli.app import console

    if os.environ.get("RANK", "0") != "0":
        return
    for note in bundle.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def ensure_weights(
    model: str, *, checkpoint: Path | None, pretrained: bool = False, random_weights: bool = False
) -> None:
    """Train an embedded model (digits_vit, digits_cnn) on first use when its weights are needed.

    Only the registered checkpoint is trained, never one named by --checkpoint; the user is told
    in one line, since the command then takes about 20 s longer.
    """
    if checkpoint is not None or pretrained or random_weights:
        return
    from vitquant.cli.app import console  # app imports this module: a late import
    from vitquant.prepare import ensure_trained, trains_on_demand

    if trains_on_demand(model):
        ensure_trained(model, log=lambda line: console.print(line, highlight=False, soft_wrap=True))


def invocation() -> str:
    """The command line that produced a result, recorded so the report can show how to rerun it."""
    return " ".join(["vitquant", *(shlex.quote(a) for a in sys.argv[1:])])


def save_result(directory: Path, command: str, payload: dict) -> Path:
    """Write ``DIR/<command>.json`` (atomically) with the reproducing command line added."""
    return write_json(directory / f"{command}.json", {"command": invocation(), **payload})
