"""One option name, one meaning: the same flags, default, type and help in every command.

Walks the Typer app itself, so a command added tomorrow is checked the day it is registered.
The few commands whose option of the same name deliberately differs are listed with the reason.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import typer

from vitquant.cli import app
from vitquant.pipeline import PipelineConfig
from vitquant.quant.configs import StaticPTQ
from vitquant.quant.qat import QATConfig

# {option: {command: why its option of that name differs from the other commands'}}
DELIBERATE = {
    "batch_size": {
        "analyze": "an inference batch (images per forward pass), not a training batch",
        "sensitivity": "an inference batch (images per forward pass), not a training batch",
        "train": "defaults to the model's training recipe",
    },
    "epochs": {
        "search": "epochs per trial: a search runs many, so fewer (as pipeline's --qat-epochs)",
        "train": "defaults to the model's training recipe",
    },
    "lr": {"train": "defaults to the model's training recipe"},
    "momentum": {"train": "defaults to the model's training recipe"},
    "weight_decay": {"train": "defaults to the model's training recipe"},
    "optimizer": {"train": "defaults to the model's training recipe"},
    "checkpoint": {"layers": "no checkpoint by default: the architecture with random weights"},
    "data": {"bench": "defaults to the data of the quantize run it re-measures"},
    "out": {
        "bench": "defaults to the quantize run's folder it re-measures",
        "demo": "defaults to runs/demo (one folder for every step)",
        "models": "writes nothing unless given (a listing)",
    },
    "overwrite": {
        "models": "a listing: rewriting it loses nothing",
        "train": "on by default: re-running the same command resumes and rewrites train.json",
    },
    "trials": {
        "pipeline": "the QAT branch's few trials (PipelineConfig.trials), at least one",
    },
}


def _options() -> dict[str, dict[str, object]]:
    """``{option name: {command: its click parameter}}`` over every command of the app."""
    group = typer.main.get_command(app)
    found: dict[str, dict[str, object]] = defaultdict(dict)
    for command_name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option":
                found[param.name][command_name] = param
    return found


OPTIONS = _options()
SHARED = sorted(name for name, commands in OPTIONS.items() if len(commands) > 1)


def _type(param) -> str:
    # Typer >= 0.2x keeps the annotation; older Typer / click give a ParamType.
    descriptor = getattr(param, "type_descriptor", None)
    return repr(descriptor.annotation if descriptor is not None else param.type)


def signature(param) -> dict:
    """What a user sees of an option: its flags, default, type, bounds and help."""
    return {
        "opts": sorted(param.opts),
        "secondary_opts": sorted(param.secondary_opts),
        "default": param.default,
        "type": _type(param),
        "min": getattr(param, "min", None),
        "max": getattr(param, "max", None),
        "multiple": param.multiple,
        "is_flag": param.is_flag,
        "help": param.help,
    }


def test_the_walk_finds_every_command_and_the_shared_options():
    commands = {c for by_command in OPTIONS.values() for c in by_command}
    assert {"quantize", "qat", "search", "pipeline", "analyze", "bench", "train"} <= commands
    assert {"per_channel", "symmetric_activations", "max_drop", "calib", "out"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_a_shared_option_is_the_same_in_every_command(name):
    exceptions = DELIBERATE.get(name, {})
    signatures = {
        command: signature(param)
        for command, param in sorted(OPTIONS[name].items())
        if command not in exceptions
    }
    reference_command, reference = next(iter(signatures.items()))
    differ = {c: s for c, s in signatures.items() if s != reference}
    assert differ == {}, f"--{name} differs from {reference_command}'s {reference}: {differ}"


@pytest.mark.parametrize(
    ("name", "command"), [(n, c) for n, by in sorted(DELIBERATE.items()) for c in sorted(by)]
)
def test_each_listed_exception_is_still_needed(name, command):
    """An exception that no longer differs (or names nothing) should leave the list."""
    assert command in OPTIONS.get(name, {}), f"{command} has no --{name}"
    others = [p for c, p in OPTIONS[name].items() if c not in DELIBERATE[name]]
    if others:
        assert signature(OPTIONS[name][command]) != signature(others[0])


def test_weight_scales_and_activation_zero_points_are_spelled_one_way():
    for command, param in OPTIONS["per_channel"].items():
        assert param.opts == ["--per-channel"], command
        assert param.secondary_opts == ["--per-tensor", "--no-per-channel"], command
        assert param.default is StaticPTQ.per_channel is QATConfig.per_channel is True
    for command, param in OPTIONS["symmetric_activations"].items():
        assert param.opts == ["--symmetric-activations"], command
        assert param.secondary_opts == [
            "--asymmetric-activations",
            "--no-symmetric-activations",
        ], command
        assert param.default is StaticPTQ.symmetric_activations is False
        assert QATConfig.symmetric_activations is False


def test_max_drop_defaults_to_the_library_budget():
    assert set(OPTIONS["max_drop"]) == {"pipeline", "quantize"}
    for param in OPTIONS["max_drop"].values():
        assert param.default == PipelineConfig().max_drop == 1.0
        assert "PipelineConfig.max_drop" in param.help


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("quantize", ["--per-tensor"], {"per_channel": False}),
        ("qat", ["--per-tensor"], {"per_channel": False}),
        ("qat", ["--no-per-channel"], {"per_channel": False}),  # the old spelling
        ("pipeline", ["--no-per-channel"], {"per_channel": False}),
        ("search", ["--asymmetric-activations"], {"symmetric_activations": False}),
        ("search", ["--no-symmetric-activations"], {"symmetric_activations": False}),
        ("qat", ["--symmetric-activations"], {"symmetric_activations": True}),
        ("quantize", [], {"per_channel": True, "symmetric_activations": False, "max_drop": 1.0}),
        ("pipeline", [], {"per_channel": True, "max_drop": 1.0}),
    ],
)
def test_both_spellings_parse(command, args, expected):
    group = typer.main.get_command(app)
    ctx = group.commands[command].make_context(command, ["digits_vit", *args])
    assert {k: ctx.params[k] for k in expected} == expected
