"""Models by name: a ``ModelSpec`` per entry, registered explicitly, plus ``timm:<name>`` on demand.

Each spec carries what the rest of vitquant needs to know about a model without building it: its
family (vit or cnn), input size, normalisation, classes and default checkpoint.
``load_model`` builds the module and loads weights strictly (a model that silently keeps random
weights is the worst failure this tool can have).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vitquant.errors import HeadMismatchError, VitquantError
from vitquant.paths import assets_dir, cache_dir

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DIGITS_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class ModelSpec:
    """What vitquant knows about a model before building it.

    Attributes:
        name: registry name, e.g. ``cifar_vit``.
        family: ``vit`` or ``cnn``; ViTs get attention/LayerNorm/GELU hooks in the analysis.
        build: ``build(num_classes) -> nn.Module`` with random weights.
        input_size: (channels, height, width) the model expects.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        classes: class names in label order, or None when unknown (timm models).
        checkpoint: default checkpoint; relative to ``$VITQUANT_ASSETS`` when ``checkpoint_root`` is
            ``assets``, to the user cache dir when it is ``cache``.
        checkpoint_root: where ``checkpoint`` is relative to.
        description: one line for ``vitquant models``.
        trainable_hint: how to produce the checkpoint when it is missing.
        timm_name: the timm model name for ``timm:`` entries (enables ``pretrained``).
    """

    name: str
    family: Literal["vit", "cnn"]
    build: Callable[[int], nn.Module]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None
    checkpoint: str | None = None
    checkpoint_root: Literal["assets", "cache"] = "assets"
    description: str = ""
    trainable_hint: str = ""
    timm_name: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    def default_checkpoint_path(self) -> Path | None:
        """Absolute path of the default checkpoint (may not exist), or None if there is none."""
        if self.checkpoint is None:
            return None
        if self.checkpoint_root == "cache":
            return cache_dir("checkpoints") / self.checkpoint
        root = assets_dir(required=False)
        if root is None:
            return None
        return root / self.checkpoint


_REGISTRY: dict[str, ModelSpec] = {}
# Names of the last Linear, the classifier: timm's ``head`` / ``head.fc``, ResNet's ``fc``,
# MobileNet's ``classifier`` / ``classifier.1``, CIFAR ResNets' ``linear``.
CLASSIFIER = re.compile(r"(^|\.)(head|fc|classifier|linear)(\.fc|\.\d+)?\.weight$")


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_specs() -> list[ModelSpec]:
    _ensure_registered()
    return list(_REGISTRY.values())


def get_spec(name: str, *, num_classes: int | None = None) -> ModelSpec:
    """Look a model up by name; ``timm:<name>`` builds a spec from timm's metadata.

    Args:
        name: registry name or ``timm:<timm model name>``.
        num_classes: for ``timm:`` models, the head size (default: timm's, usually 1000).
    """
    _ensure_registered()
    if name.startswith("timm:"):
        from vitquant.models.timm_any import timm_spec

        return timm_spec(name.removeprefix("timm:"), num_classes=num_classes)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise VitquantError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}; "
            "or any timm model as timm:<name> (e.g. timm:deit_small_patch16_224)."
        )
    return _REGISTRY[name]


@dataclass
class LoadedModel:
    """A built model in eval mode with where its weights came from."""

    model: nn.Module
    spec: ModelSpec
    checkpoint: str  # a path, "pretrained", or "random"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a plain state_dict (safe loading: ``weights_only=True``).

    Accepts a plain state_dict, ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers, and strips
    the ``module.`` prefix DataParallel adds. Anything else (a pickled ``nn.Module``, a corrupt
    file) is refused with one line naming the file and the fix, not torch's advice to set
    ``weights_only=False``.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle of arbitrary objects, ...
        raise VitquantError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise VitquantError(
            f"{path} holds an object of type {type(obj).__name__}, not a state_dict of tensors; "
            f"save model.state_dict() instead."
        )
    odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise VitquantError(
            f"{path} is not a state_dict of tensors ({odd[0]!r} holds an object of type "
            f"{type(obj[odd[0]]).__name__}); save model.state_dict() instead."
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a clause (torch's text is 12 lines)."""
    text = str(exc)
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled:
        return (
            f"it holds a pickled {pickled.group(1)} object, not a state_dict of tensors; "
            "save model.state_dict() instead (torch.save(model.state_dict(), PATH))."
        )
    return (
        "it is not a PyTorch state_dict file (corrupt, truncated or another format); pass a "
        "file written by torch.save(model.state_dict(), PATH)."
    )


def classifier_mismatch(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """The classifier weight whose size is the only difference between ``state`` and ``model``.

    Returns ``(key, checkpoint shape, model shape)`` when the checkpoint fits the model except
    for the number of rows of one 2-D weight named like a classifier (``head``, ``fc``,
    ``classifier``, ``linear``) and its bias; None otherwise (no mismatch, or a different
    architecture, which ``load_state_dict_strict`` describes).
    """
    own = model.state_dict()
    if set(own) - set(state) - {k for k in own if k.endswith("num_batches_tracked")}:
        return None
    if set(state) - set(own):
        return None
    differ = [k for k in own if k in state and state[k].shape != own[k].shape]
    heads = [k for k in differ if CLASSIFIER.search(k) and own[k].dim() == 2]
    if len(heads) != 1:
        return None
    key = heads[0]
    ours, theirs = tuple(own[key].shape), tuple(state[key].shape)
    bias = key.removesuffix("weight") + "bias"
    if set(differ) - {key, bias} or len(theirs) != 2 or theirs[1] != ours[1]:
        return None
    return key, theirs, ours


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what does not match."""
    own = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 lack BatchNorm's step counter; it only matters for
    # momentum=None, so it is the one key allowed to be missing (filled with the model's 0).
    state = dict(state)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:10])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}")
        if shape:
            parts.append(f"shape mismatches ({len(shape)}): {'; '.join(shape[:5])}")
        raise VitquantError(
            f"checkpoint {source} does not fit this model: "
            + " | ".join(parts)
            + ". Pass the checkpoint trained for this architecture (--checkpoint PATH)."
        )
    model.load_state_dict(state, strict=True)


def load_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_weights: bool = False,
    num_classes: int | None = None,
) -> LoadedModel:
    """Build a registry model and load its weights.

    Args:
        name: registry name or ``timm:<name>``.
        checkpoint: a checkpoint file; default the spec's default checkpoint.
        pretrained: ``timm:`` models only: download timm's pretrained weights (needs the network).
        random_weights: keep random weights on purpose (analysis of an architecture); never implied.
        num_classes: ``timm:`` models: head size (e.g. to match the data).
    """
    spec = get_spec(name, num_classes=num_classes)
    if pretrained:
        if spec.timm_name is None:
            raise VitquantError(
                f"--pretrained applies to timm:<name> models; {name} loads its checkpoint "
                "(use --checkpoint PATH for another one)."
            )
        from vitquant.models.timm_any import build_pretrained

        model = build_pretrained(spec)
        return LoadedModel(model.eval(), spec, "pretrained")

    model = spec.build(spec.num_classes or 1000)
    if random_weights:
        return LoadedModel(model.eval(), spec, "random")

    path = Path(checkpoint).expanduser() if checkpoint else spec.default_checkpoint_path()
    if path is None:
        where = (
            "set VITQUANT_ASSETS to the shared assets folder"
            if spec.checkpoint and spec.checkpoint_root == "assets"
            else "pass --checkpoint PATH"
        )
        extra = " or --pretrained (needs network) or --random-weights" if spec.timm_name else ""
        raise VitquantError(f"no checkpoint for {name}: {where}{extra}.")
    if not path.is_file():
        hint = spec.trainable_hint or "pass --checkpoint PATH"
        raise VitquantError(f"checkpoint for {name} not found at {path}. {hint}")
    state = read_state_dict(path)
    head = classifier_mismatch(model, state)
    if head is not None:
        key, theirs, ours = head
        fix = (
            f"pass --num-classes {theirs[0]} with data of {theirs[0]} classes, or a checkpoint "
            f"for {ours[0]} classes."
            if spec.timm_name
            else f"pass a checkpoint of {name} trained for its {ours[0]} classes."
        )
        needs = "" if spec.timm_name else f"{name} predicts {ours[0]} classes"
        raise HeadMismatchError(
            source=str(path), key=key, shape=theirs, model_classes=ours[0], fix=fix, needs=needs
        )
    load_state_dict_strict(model, state, str(path))
    return LoadedModel(model.eval(), spec, str(path))


def _ensure_registered() -> None:
    # Registration is explicit: this module lists the builder modules it imports.
    if _REGISTRY:
        return
    from vitquant.models import catalog

    catalog.register_all(register)
