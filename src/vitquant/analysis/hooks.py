"""Which tensors the analysis observes, and forward hooks that hand them to a callback.

Observation points:

- the output of every Linear/Conv module (``point == module``);
- for ViTs also every LayerNorm output, every GELU output and the attention probabilities after
  the softmax (``blocks.N.attn.softmax``). timm's ``Attention`` computes them inside fused SDPA,
  so while observing, ``fused_attn`` is switched off and the probabilities are read as the output
  of ``attn.attn_drop`` (an identity in eval mode that timm applies right after the softmax).

Each point names its ``module``: the quantizable Linear/Conv whose input or output it is, i.e. the
name an ignore list takes. For a Linear/Conv output that is the layer itself; for a LayerNorm,
GELU or softmax it is the first Linear/Conv that runs after it (``norm1 -> attn.qkv``,
``mlp.act -> mlp.fc2``, ``attn.softmax -> attn.proj`` (the probabilities weight ``v`` into
``proj``'s input), final ``norm -> head``), found by recording the call order of one forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from vitquant.evaluate import QUANTIZABLE

SOFTMAX_SUFFIX = "softmax"
KINDS = (
    "patch_embed",
    "qkv",
    "proj",
    "fc1",
    "fc2",
    "norm",
    "act",
    "softmax",
    "head",
    "conv",
    "conv_dw",
    "conv_pw",
    "linear",
)


@dataclass(frozen=True)
class Point:
    """One observed tensor.

    Attributes:
        point: where it is observed, e.g. ``blocks.0.attn.qkv`` or ``blocks.0.attn.softmax``.
        module: the quantizable module whose input or output it is (ignore-list name).
        kind: layer type, one of ``KINDS``.
        block: block index (``blocks.N`` -> N; CNN stages numbered in order), None outside blocks.
        block_name: the block's module path, e.g. ``blocks.3`` or ``layer2.1``.
        channel_dim: the dimension holding channels (1 for NCHW and attention heads, -1 for tokens).
    """

    point: str
    module: str
    kind: str
    block: int | None
    block_name: str | None
    channel_dim: int
    target: nn.Module = field(repr=False, compare=False, hash=False)


def is_activation(module: nn.Module) -> bool:
    """GELU modules (torch's and timm's own)."""
    return isinstance(module, nn.GELU) or type(module).__name__ in ("GELU", "GELUTanh", "QuickGELU")


def _has_softmax(module: nn.Module) -> bool:
    return hasattr(module, "fused_attn") and isinstance(
        getattr(module, "attn_drop", None), nn.Module
    )


def layer_kind(name: str, module: nn.Module, *, head: str | None = None) -> str:
    """Layer type of a module: qkv, proj, fc1, fc2, norm, act, head, patch_embed, conv, ...

    Args:
        name: module name.
        module: the module.
        head: name of the classifier (the last Linear), which gets kind ``head``.
    """
    last = name.rsplit(".", 1)[-1]
    if isinstance(module, nn.LayerNorm):
        return "norm"
    if is_activation(module):
        return "act"
    if name == head:
        return "head"
    if name.startswith("patch_embed"):
        return "patch_embed"
    if last in ("qkv", "fc1", "fc2"):
        return last
    if last == "proj" and ".attn" in f".{name}":
        return "proj"
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "conv_dw"
        if all(k == 1 for k in module.kernel_size):
            return "conv_pw"
        return "conv"
    return "linear"


_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")


def block_names(names: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """Block index and path of each module name.

    ``blocks.N....`` gets N; otherwise the block is the path up to the first numeric component
    (``layer2.1``, ``features.5``) and blocks are numbered in order of appearance.
    """
    out: dict[str, tuple[int | None, str | None]] = {}
    order: dict[str, int] = {}
    for name in names:
        m = re.match(r"^blocks\.(\d+)(\.|$)", name)
        if m:
            out[name] = (int(m.group(1)), f"blocks.{m.group(1)}")
            continue
        m = _BLOCK.match(name)
        if m is None:
            out[name] = (None, None)
            continue
        prefix = m.group(1)
        order.setdefault(prefix, len(order))
        out[name] = (order[prefix], prefix)
    return out


def head_name(model: nn.Module) -> str | None:
    """The classifier: the last quantizable module, when it is a Linear."""
    last = None
    for name, module in model.named_modules():
        if name and isinstance(module, QUANTIZABLE):
            last = (name, module)
    return last[0] if last and isinstance(last[1], nn.Linear) else None


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm attention blocks (those with a ``fused_attn`` switch and an ``attn_drop``)."""
    return [m for m in model.modules() if _has_softmax(m)]


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Switch timm attention to the explicit softmax path (restored on exit)."""
    saved = [(m, m.fused_attn) for m in attention_modules(model)]
    for m, _ in saved:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, flag in saved:
            m.fused_attn = flag


def _call_order(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Modules in the order their forward finished during one forward pass of ``example``."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod)) for m in model.modules()
    ]
    try:
        with torch.no_grad(), unfused_attention(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order


def observation_points(
    model: nn.Module, example: torch.Tensor, *, family: str = "vit"
) -> list[Point]:
    """The points to observe in ``model``, in forward order.

    Args:
        model: the float model (eval mode).
        example: one input batch (only used to record the call order).
        family: ``vit`` adds LayerNorm, GELU and softmax points; ``cnn`` observes Linear/Conv only.
    """
    head = head_name(model)
    named = [(n, m) for n, m in model.named_modules() if n]
    blocks = block_names([n for n, _ in named])
    candidates: dict[int, tuple[str, nn.Module, str, int]] = {}  # id(target) -> info
    for name, module in named:
        if isinstance(module, QUANTIZABLE):
            cdim = 1 if isinstance(module, nn.Conv1d | nn.Conv2d) else -1
            candidates[id(module)] = (name, module, layer_kind(name, module, head=head), cdim)
        elif family == "vit" and (isinstance(module, nn.LayerNorm) or is_activation(module)):
            candidates[id(module)] = (name, module, layer_kind(name, module, head=head), -1)
        elif family == "vit" and _has_softmax(module):
            # attn_drop's output is the softmax probabilities (B, heads, N, N); channels = heads.
            point = f"{name}.{SOFTMAX_SUFFIX}"
            candidates[id(module.attn_drop)] = (point, module.attn_drop, "softmax", 1)

    points: list[Point] = []
    seen: set[int] = set()
    pending: list[tuple[str, nn.Module, str, int]] = []
    names_of = {id(m): n for n, m in named}
    for module in _call_order(model, example):
        info = candidates.get(id(module))
        if info is not None and id(module) not in seen:
            seen.add(id(module))
            pending.append(info)
        if isinstance(module, QUANTIZABLE):
            qname = names_of[id(module)]
            for point, target, kind, cdim in pending:
                block, bname = blocks.get(point.removesuffix(f".{SOFTMAX_SUFFIX}"), (None, None))
                if kind == "head":
                    block, bname = None, None
                points.append(
                    Point(
                        point,
                        qname if target is not module else point,
                        kind,
                        block,
                        bname,
                        cdim,
                        target,
                    )
                )
            pending = []
    for point, target, kind, cdim in pending:  # observed after the last Linear/Conv
        block, bname = blocks.get(point.removesuffix(f".{SOFTMAX_SUFFIX}"), (None, None))
        points.append(Point(point, point, kind, block, bname, cdim, target))
    return points


@contextmanager
def observe(
    model: nn.Module, points: list[Point], callback: Callable[[Point, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``callback(point, output)`` for every point on every forward pass inside the block."""

    def make(p: Point):
        def hook(_mod, _inp, out):
            if isinstance(out, torch.Tensor):
                callback(p, out.detach())

        return hook

    handles = [p.target.register_forward_hook(make(p)) for p in points]
    try:
        with unfused_attention(model):
            yield
    finally:
        for h in handles:
            h.remove()
