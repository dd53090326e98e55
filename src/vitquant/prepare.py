"""Make sure a model's checkpoint exists, training the small embedded models when it does not."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields

from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.registry import get_spec, load_model
from vitquant.train import TrainConfig, train


def recipe(spec, **overrides) -> TrainConfig:
    """The spec's default recipe (``extra['train']``) with the given non-None overrides."""
    base = dict(spec.extra.get("train", {}))
    base.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in base.items() if k in names})


def trains_on_demand(name: str) -> bool:
    """Whether ``name`` is an embedded model whose checkpoint is trained into the user cache.

    ``timm:`` names and unknown names are never trained here (the loader reports them).
    """
    if name.startswith("timm:"):
        return False
    try:
        spec = get_spec(name)
    except VitquantError:  # unknown name: load_model raises the error with suggestions
        return False
    return spec.checkpoint is not None and spec.checkpoint_root == "cache"


def ensure_trained(name: str, *, log: Callable[[str], None] = print) -> str:
    """Train ``name`` with its recipe if its cached checkpoint is missing; return the path.

    Only models whose checkpoint lives in the user cache (the digits models) are trained here;
    the others raise the registry's "checkpoint not found" error. Training says so in one line
    (``log``); the per-epoch lines stay quiet.
    """
    spec = get_spec(name)
    path = spec.default_checkpoint_path()
    if path is not None and path.is_file():
        return str(path)
    if spec.checkpoint_root != "cache":
        return load_model(name).checkpoint  # raises the clear error
    data = "digits" if name.startswith("digits_") else "cifar10"
    log(f"{name}: no cached checkpoint, training it{_duration(spec.trainable_hint)} ...")
    bundle = load_data(data, calib=0)
    model = load_model(name, random_weights=True).model
    train(model, spec, bundle, recipe(spec), checkpoint=path, log=lambda line: None)
    return str(path)


def _duration(hint: str) -> str:
    """`` (about 20 s)`` taken from a spec's training hint, or nothing."""
    found = re.search(r"\(about [^)]*\)", hint)
    return f" {found.group(0)}" if found else ""
