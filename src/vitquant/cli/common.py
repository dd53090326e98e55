"""The small helpers that turn the shared options (``cli/options.py``) into library objects."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from vitquant.data import DataBundle, check_compatible, load_data
from vitquant.errors import HeadMismatchError
from vitquant.io import check_writable, write_json
from vitquant.registry import LoadedModel, load_model


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


def use_x86_lowering(float_ops, cpp_wrapper: bool = False) -> None:
    """Set how this process lowers x86 int8 graphs (``--x86-float``, a choice of
    ``options.X86Float`` that typer has already checked, and ``--x86-cpp-wrapper``)."""
    from vitquant.quant.backends import get_backend

    backend = get_backend("x86")
    backend.float_ops = getattr(float_ops, "value", float_ops)
    backend.cpp_wrapper = cpp_wrapper
