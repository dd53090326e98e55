"""What every API function does first: the model and the data, resolved and checked together.

``setup(model, data=..., calibration=..., val=..., test=..., train=...)`` returns a ``Setup``:

- ``model``: a callable returning logits (``api.model.returning_logits`` where needed);
- ``spec``: the registry's ``ModelSpec`` for a ``load_model`` module, else one derived from the
  first batch and the logits (``api.model.derive_spec``);
- ``data``: a ``DataBundle`` when only a named data set is given (exactly what the command line
  uses), else a ``UserData`` over the user's batches (and the named set's other roles).

Named data (``"digits"``, ``"cifar10"``, a folder) goes through its preprocessing: the registry
model's own, or for another module the data set's standard one (``PREPROCESS``: digits 8x8 and
CIFAR-10 32x32 with their mean/std, folders 224x224 with ImageNet's). The user's own batches are
never preprocessed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vitquant.api.data import KEYWORDS, Batches, UserData
from vitquant.api.model import derive_spec, loaded_info, probe, with_input_size
from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.models.catalog import (
    CIFAR_MEAN,
    CIFAR_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from vitquant.registry import ModelSpec

# input size, mean, std applied to a named data set for a module vitquant did not build
PREPROCESS = {
    "digits": ((1, 8, 8), DIGITS_MEAN, DIGITS_STD),
    "cifar10": ((3, 32, 32), CIFAR_MEAN, CIFAR_STD),
}
FOLDER_PREPROCESS = ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD)
ROLE_ORDER = ("calib", "val", "test", "fit")


@dataclass
class Setup:
    """A model and its data, ready for the library's functions.

    Attributes:
        model: ``x -> logits`` (an ``nn.Module`` whenever the user gave one).
        spec: its ``ModelSpec``.
        data: a ``DataBundle`` or a ``UserData``.
        name: the registry name, else the module's class name.
        checkpoint: where the weights came from (registry models), else None.
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    spec: ModelSpec | None
    data: DataBundle | UserData | None
    name: str
    checkpoint: str | None = None

    def has(self, role: str) -> bool:
        if self.data is None:
            return False
        if isinstance(self.data, UserData):
            return self.data.has(role)
        return self.data.sizes()[role] > 0

    def require(self, *roles: str, why: str) -> None:
        """Raise naming the keyword to pass when one of ``roles`` has no images."""
        for role in roles:
            if not self.has(role):
                kw = KEYWORDS[role]
                raise VitquantError(
                    f"{why} needs {kw} images: pass {kw}= (a DataLoader or a list of "
                    "(images, labels) batches) or data='digits'/'cifar10'/a folder."
                )

    def describe(self) -> dict:
        """``model``, ``checkpoint`` and the data's ``describe()``: the head of every result."""
        return {"model": self.name, "checkpoint": self.checkpoint, **self.data.describe()}


def load_named(data, *, calib: int = 256, val: int | None = None) -> DataBundle:
    """``data`` as a ``DataBundle``: a loaded one as is, a name or folder through ``load_data``."""
    from vitquant.data import load_data

    if isinstance(data, DataBundle):
        return data
    if isinstance(data, str | Path):
        return load_data(data, calib=calib, val=val)
    raise VitquantError(
        f"data= takes 'digits', 'cifar10', a folder path or vq.load_data(...), not a "
        f"{type(data).__name__}; pass your own batches as calibration=/val=/test=/train=."
    )


def _preprocess(bundle: DataBundle):
    return PREPROCESS.get(bundle.name, FOLDER_PREPROCESS)


def setup(
    model,
    *,
    data=None,
    calibration=None,
    val=None,
    test=None,
    train=None,
    family: str | None = None,
    optional: bool = False,
) -> Setup:
    """Resolve ``model`` and its data (see the module docstring).

    Args:
        model: a registry name, a module from ``load_model``, any ``nn.Module``, a quantized
            result of ``quantize``/``qat``, or a callable (e.g. ``load_artifact``'s runner).
        data: a named data set (``digits``, ``cifar10``, a folder) or a ``DataBundle``.
        calibration, val, test, train: the user's batches per role (override ``data``'s).
        family: ``vit``/``cnn`` for a module vitquant did not build (None: guessed).
        optional: without any data, return the model as given (``data`` and, unless it is a
            registry model, ``spec`` None) instead of raising; for steps that read no images.
    """
    from vitquant.api.model import load_model

    given = {
        role: Batches(KEYWORDS[role], source)
        for role, source in (("calib", calibration), ("val", val), ("test", test), ("fit", train))
        if source is not None
    }
    bundle = load_named(data) if data is not None else None
    if bundle is None and not given and not optional:
        raise VitquantError(
            "no data: pass data='digits'/'cifar10'/a folder, or your own batches as "
            "calibration=, val=, test= (a DataLoader or a list of (images, labels))."
        )

    spec, name, checkpoint = None, None, None
    if isinstance(model, str):
        name = model
        model = load_model(model)
    info = loaded_info(model)
    if info is not None:
        model, spec, checkpoint, name = info.model, info.spec, info.checkpoint, info.spec.name
    elif getattr(model, "is_vitquant_result", False):  # quantize()/qat(): its module and spec
        model, spec, name = model.module, model.spec, model.name
    elif hasattr(model, "int8_layers") and hasattr(model, "module"):  # a library QuantizedModel
        model = model.module
    name = name or (type(model).__name__ if isinstance(model, torch.nn.Module) else "model")

    if bundle is None and not given:
        return Setup(model=model, spec=spec, data=None, name=name, checkpoint=checkpoint)
    example = next((given[r].first() for r in ROLE_ORDER if r in given), None)
    if spec is not None:  # registry model (or a quantized result): its own spec
        if example is not None:
            spec = with_input_size(spec, example)
            model, _ = probe(model, example)
        if bundle is not None:
            from vitquant.data import check_compatible

            check_compatible(bundle, spec)
    else:
        prep = _preprocess(bundle) if bundle is not None else None
        if example is None:  # named data only: its first preprocessed images
            spec0 = derive_spec(model, torch.zeros(1, *prep[0]), torch.zeros(1, 1), preprocess=prep)
            role = next(r for r in ROLE_ORDER if bundle.sizes()[r] > 0)
            example = next(bundle.batches(role, spec0, batch_size=2))[0]
        model, logits = probe(model, example)
        classes = bundle.classes if bundle is not None else None
        spec = derive_spec(model, example, logits, family=family, classes=classes, preprocess=prep)
    if given:
        _check_labels(given, len(spec.classes))
        data = UserData(given, base=bundle, classes=bundle.classes if bundle else spec.classes)
    else:
        data = bundle
    return Setup(model=model, spec=spec, data=data, name=name, checkpoint=checkpoint)


def _check_labels(given: dict[str, Batches], n_classes: int) -> None:
    """The first val/test batch's labels must be class indices of the model's logits."""
    for role in ("val", "test"):
        if role not in given:
            continue
        for _, y in given[role]:
            if len(y) and int(y.min()) == -1:
                raise VitquantError(
                    f"{KEYWORDS[role]}= batches carry no labels; accuracy needs (images, labels) "
                    "batches (only calibration= may omit them)."
                )
            if len(y) and (int(y.max()) >= n_classes or int(y.min()) < 0):
                raise VitquantError(
                    f"{KEYWORDS[role]}= labels run from {int(y.min())} to {int(y.max())} but the "
                    f"model returns {n_classes} logits; labels must be class indices "
                    f"0..{n_classes - 1}."
                )
            break


def scope_modules(model, ignore) -> tuple[list[str], list[str], dict]:
    """``(module names, notes, matches)`` of an ignore list (an ``IgnoreScope``, a list of
    names/globs/``type:X`` entries, or None) resolved against ``model``."""
    from vitquant.quant.scope import resolve_modules

    if isinstance(ignore, str):
        ignore = [ignore]
    resolved = resolve_modules(model, ignore)
    return list(resolved.modules), list(resolved.notes), dict(resolved.matches)


def roles_present(s: Setup, roles: Sequence[str] = ("val", "test")) -> tuple[str, ...]:
    """The roles among ``roles`` that have images."""
    return tuple(r for r in roles if s.has(r))
