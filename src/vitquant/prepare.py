"""Make sure a model's checkpoint exists, training the small embedded models when it does not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from vitquant.data import load_data
from vitquant.registry import get_spec, load_model
from vitquant.train import TrainConfig, train


def recipe(spec, **overrides) -> TrainConfig:
    """The spec's default recipe (``extra['train']``) with the given non-None overrides."""
    base = dict(spec.extra.get("train", {}))
    base.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in base.items() if k in names})


def ensure_trained(name: str, *, log: Callable[[str], None] = print) -> str:
    """Train ``name`` with its recipe if its cached checkpoint is missing; return the path.

    Only models whose checkpoint lives in the user cache (the digits models) are trained here;
    the others raise the registry's "checkpoint not found" error.
    """
    spec = get_spec(name)
    path = spec.default_checkpoint_path()
    if path is not None and path.is_file():
        return str(path)
    if spec.checkpoint_root != "cache":
        return load_model(name).checkpoint  # raises the clear error
    data = "digits" if name.startswith("digits_") else "cifar10"
    log(f"{name}: no cached checkpoint, training it ({spec.trainable_hint})")
    bundle = load_data(data, calib=0)
    model = load_model(name, random_weights=True).model
    train(model, spec, bundle, recipe(spec), checkpoint=path, log=log)
    return str(path)
