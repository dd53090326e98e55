"""Models for the API: a registry name or any ``nn.Module``, seen by vitquant as ``x -> logits``.

- ``load_model(name)`` builds a registry model (``digits_vit``, ``cifar_vit``, ``timm:<name>``)
  with its weights, as the command line does, and returns the ``nn.Module``; vitquant remembers
  its ``ModelSpec`` (input size, normalisation, classes) for named data sets.
- Any other module is described by ``derive_spec`` from what it does: the input size of the
  first batch it is given and the number of logits it returns.
- Every path (analysis hooks, ``torch.export`` for pt2e, the ONNX exporter, ExecuTorch) needs a
  module whose forward returns a tensor. A model returning an object with ``.logits`` (Hugging
  Face's ``ImageClassifierOutput``), a dict with ``logits`` or a tuple gets a *view* of itself
  whose forward returns that tensor (``returning_logits``): same parameters, same submodules,
  same module names, so ignore lists and analysis points keep the names the user sees.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.registry import LoadedModel, ModelSpec

# Modules returned by ``load_model`` -> what was loaded (spec, checkpoint); weak, so the
# registry never keeps a model alive.
_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOGITS_CLASSES: dict[type, type] = {}


def load_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_weights: bool = False,
    num_classes: int | None = None,
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """A registry model with its weights, in eval mode (``vitquant models`` lists the names).

    The embedded digits models are trained into the user cache on first use (about 20 s) when
    no ``checkpoint`` is given, as the command line does.

    Args:
        name: registry name or ``timm:<name>``.
        checkpoint: a state_dict file (default: the model's registered checkpoint).
        pretrained: ``timm:`` models: timm's pretrained weights (needs the network).
        random_weights: keep random weights on purpose.
        num_classes: ``timm:`` models: the classifier size.
        log: where the one "training it" line goes (None: silent).
    """
    from vitquant.prepare import ensure_trained, trains_on_demand
    from vitquant.registry import load_model as registry_load

    if not isinstance(name, str):
        raise VitquantError(
            f"load_model takes a registry name (e.g. 'digits_vit'), not a "
            f"{type(name).__name__}; pass your nn.Module straight to the other functions."
        )
    if checkpoint is None and not (pretrained or random_weights) and trains_on_demand(name):
        ensure_trained(name, log=log or (lambda line: None))
    loaded = registry_load(
        name,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_weights=random_weights,
        num_classes=num_classes,
    )
    _LOADED[loaded.model] = loaded
    return loaded.model


def loaded_info(model) -> LoadedModel | None:
    """What ``load_model`` loaded into ``model`` (None for any other module)."""
    if isinstance(model, LoadedModel):
        return model
    try:
        return _LOADED.get(model)
    except TypeError:  # not weak-referenceable (e.g. an ONNX Runtime session wrapper)
        return None


def logits_of(out) -> torch.Tensor:
    """The logits tensor of a model output: a tensor, ``.logits``, ``["logits"]`` or ``[0]``."""
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, "logits", None)
    if value is None and isinstance(out, dict):
        value = out.get("logits")
    if value is None and isinstance(out, tuple | list) and out:
        value = out[0]
    if not isinstance(value, torch.Tensor):
        raise VitquantError(
            f"the model returned a {type(out).__name__}; vitquant needs the logits: a tensor "
            "(N, classes), an object with .logits, a dict with 'logits' or a tuple whose first "
            "element is the logits."
        )
    return value


def _logits_class(cls: type) -> type:
    """``cls`` with a forward that returns ``logits_of(cls.forward(x))`` (cached per class)."""
    if cls not in _LOGITS_CLASSES:

        class ReturningLogits(cls):
            def forward(self, x: torch.Tensor) -> torch.Tensor:  # one input: torch.export's
                return logits_of(super().forward(x))  # dynamic batch names it

        ReturningLogits.__name__ = cls.__name__
        ReturningLogits.__qualname__ = cls.__qualname__
        ReturningLogits.__module__ = cls.__module__
        ReturningLogits._vitquant_logits = True
        _LOGITS_CLASSES[cls] = ReturningLogits
    return _LOGITS_CLASSES[cls]


def returning_logits(model: nn.Module) -> nn.Module:
    """A view of ``model`` whose forward returns the logits tensor (see the module docstring).

    The view is a shallow copy with a subclass of the model's class: it shares every parameter,
    buffer and submodule with ``model`` (training one trains the other), and module names are
    unchanged.
    """
    if getattr(type(model), "_vitquant_logits", False):
        return model
    if isinstance(model, torch.jit.ScriptModule):
        raise VitquantError(
            "a TorchScript module cannot be exported by torch.export; pass the Python nn.Module."
        )
    view = copy.copy(model)
    view.__class__ = _logits_class(type(model))
    return view


def guess_family(model) -> str:
    """``vit`` when the model has LayerNorm or attention modules (the analysis then observes
    LayerNorm, GELU and softmax outputs too), else ``cnn``."""
    if not isinstance(model, nn.Module):
        return "cnn"
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.MultiheadAttention):
            return "vit"
        if "attention" in type(module).__name__.lower():
            return "vit"
    return "cnn"


def _no_build(num_classes: int) -> nn.Module:
    raise VitquantError("this model was given as a module; vitquant cannot rebuild it by name.")


@torch.no_grad()
def probe(model, example: torch.Tensor):
    """``(model as x -> logits, logits of example)``: runs two images once."""
    if isinstance(model, nn.Module):
        model.eval()
    out = model(example[:2])
    if isinstance(out, torch.Tensor):
        return model, out
    logits = logits_of(out)
    if not isinstance(model, nn.Module):
        return (lambda x, _m=model: logits_of(_m(x))), logits
    return returning_logits(model), logits


def derive_spec(
    model,
    example: torch.Tensor,
    logits: torch.Tensor,
    *,
    family: str | None = None,
    classes: tuple[str, ...] | None = None,
    preprocess: tuple[tuple[int, int, int], tuple, tuple] | None = None,
) -> ModelSpec:
    """A ``ModelSpec`` for a module vitquant did not build.

    Args:
        model: the module (its class names the spec; its layers guess the family).
        example: a batch ``(N, C, H, W)`` as the model takes it: ``input_size`` is its shape.
        logits: the model's output on it: its last dimension is the number of classes.
        family: ``vit`` or ``cnn`` (None: ``guess_family``).
        classes: class names (None: ``"0"``, ``"1"``, ... for each logit).
        preprocess: ``(input_size, mean, std)`` applied to named data sets; None: the batches
            are the user's, given as they are (mean 0, std 1 are recorded, never applied).
    """
    n_classes = int(logits.shape[-1])
    if classes is not None and len(classes) != n_classes:
        raise VitquantError(
            f"the model returns {n_classes} logits but the data has {len(classes)} classes."
        )
    c = int(example.shape[1])
    input_size, mean, std = preprocess or (tuple(example.shape[1:]), (0.0,) * c, (1.0,) * c)
    family = family or guess_family(model)
    if family not in ("vit", "cnn"):
        raise VitquantError(f"family must be 'vit' or 'cnn', not {family!r}.")
    name = type(model).__name__ if isinstance(model, nn.Module) else "model"
    return ModelSpec(
        name=name,
        family=family,
        build=_no_build,
        input_size=tuple(int(v) for v in input_size),
        mean=tuple(mean),
        std=tuple(std),
        classes=tuple(classes) if classes else tuple(str(i) for i in range(n_classes)),
        description="a module given to the Python API",
        extra={"user_module": True},
    )


def with_input_size(spec: ModelSpec, example: torch.Tensor) -> ModelSpec:
    """``spec`` whose ``input_size`` is the user's batches' (registry model, user batches)."""
    size = tuple(int(v) for v in example.shape[1:])
    return spec if spec.input_size == size else replace(spec, input_size=size)
