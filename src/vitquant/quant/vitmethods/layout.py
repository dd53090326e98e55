"""Where the parts of a DeiT-style timm ``VisionTransformer`` are, checked once per transform.

The transforms of this package rewrite weights around the residual stream, so they need to know
exactly which modules write into it and which LayerNorm feeds which Linear:

- writers: ``patch_embed.proj`` (a Conv2d), ``cls_token``/``reg_token``, ``pos_embed``, and per
  block ``attn.proj`` (after ``ls1``) and ``mlp.fc2`` (after ``ls2``);
- LayerNorm -> readers: ``blocks.N.norm1 -> attn.qkv`` (and ``attn.gate`` when gated),
  ``blocks.N.norm2 -> mlp.fc1`` and, when pooling commutes with a per-channel affine map
  (``token``, ``avg`` or no pooling), the final ``norm`` (or ``fc_norm`` after pooling) -> ``head``.

Anything else (a CNN, a post-norm ``ResPostBlock``, a parallel block, a SwiGLU MLP, attention
pooling) is refused with a ``VitquantError`` that says what was found and what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vitquant.errors import VitquantError

# global_pool values whose pooling is an average or a selection of tokens: linear maps of the
# tokens that commute with any per-channel affine map and with a rotation of the channels.
LINEAR_POOLS = ("token", "avg", "")


@dataclass(frozen=True)
class BlockParts:
    """The modules of one timm ``Block`` (pre-norm: ``x + ls1(attn(norm1(x)))``, then the MLP)."""

    name: str  # e.g. "blocks.3"
    norm1: nn.LayerNorm
    attn: nn.Module
    qkv: nn.Linear
    gate: nn.Linear | None  # a gated attention's second reader of norm1
    proj: nn.Linear
    ls1: nn.Module  # LayerScale or Identity
    norm2: nn.LayerNorm
    mlp: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear
    ls2: nn.Module


@dataclass(frozen=True)
class NormPair:
    """A LayerNorm and the Linears that read its output (directly, or through linear pooling)."""

    name: str
    norm: nn.LayerNorm
    readers: tuple[tuple[str, nn.Linear], ...]


@dataclass(frozen=True)
class VitLayout:
    """A checked DeiT-style ViT.

    Attributes:
        dim: embedding width d of the residual stream.
        blocks: the blocks in order.
        pairs: every LayerNorm -> Linear(s) pair, in forward order.
        final: name of the LayerNorm the head reads (``norm`` or ``fc_norm``), None when the head
            is not a Linear or pooling does not commute (then it is left out of ``pairs``).
        pool: ``global_pool``.
    """

    dim: int
    blocks: tuple[BlockParts, ...]
    pairs: tuple[NormPair, ...]
    final: str | None
    pool: str


def _refuse(model: nn.Module, problem: str) -> VitquantError:
    return VitquantError(
        f"{type(model).__name__}: {problem}. The ViT transforms (ln-reparam, smoothquant, rotate) "
        "take a DeiT-style timm VisionTransformer: patch_embed conv, cls_token/pos_embed, "
        "pre-norm blocks (norm1 -> attn.qkv, attn.proj, norm2 -> mlp.fc1 -> act -> mlp.fc2), "
        "a final LayerNorm and a Linear head. Quantize other models without them."
    )


def _is_ln(module: nn.Module | None) -> bool:
    return isinstance(module, nn.LayerNorm)


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _block(model: nn.Module, name: str, block: nn.Module, dim: int) -> BlockParts:
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block

    if not isinstance(block, Block):
        raise _refuse(model, f"{name} is a {type(block).__name__}, not timm's pre-norm Block")
    attn, mlp = block.attn, block.mlp
    if type(mlp) is not Mlp or not isinstance(mlp.fc1, nn.Linear):
        raise _refuse(model, f"{name}.mlp is a {type(mlp).__name__}, not timm's Linear Mlp")
    qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        raise _refuse(model, f"{name}.attn has no qkv/proj Linears")
    for part in ("norm1", "norm2"):
        norm = getattr(block, part)
        if not _is_ln(norm) or tuple(norm.normalized_shape) != (dim,):
            rotated = isinstance(norm, nn.RMSNorm)
            hint = " (rotate replaced it: apply rotate last)" if rotated else ""
            problem = f"{name}.{part} is a {type(norm).__name__}, not LayerNorm({dim}){hint}"
            raise _refuse(model, problem)
    for part in ("ls1", "ls2"):
        ls = getattr(block, part)
        if not (_is_identity(ls) or isinstance(getattr(ls, "gamma", None), nn.Parameter)):
            raise _refuse(model, f"{name}.{part} is a {type(ls).__name__}, not LayerScale")
    gate = getattr(attn, "gate", None)
    return BlockParts(
        name=name,
        norm1=block.norm1,
        attn=attn,
        qkv=qkv,
        gate=gate if isinstance(gate, nn.Linear) else None,
        proj=proj,
        ls1=block.ls1,
        norm2=block.norm2,
        mlp=mlp,
        fc1=mlp.fc1,
        fc2=mlp.fc2,
        ls2=block.ls2,
    )


def vit_layout(model: nn.Module) -> VitLayout:
    """Check that ``model`` is a DeiT-style timm ViT and name its parts.

    Raises:
        VitquantError: for any other model, naming the part that does not fit.
    """
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise _refuse(model, "not a timm VisionTransformer")
    proj = getattr(model.patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d):
        raise _refuse(model, "patch_embed has no Conv2d projection")
    dim = proj.out_channels
    if not _is_identity(getattr(model.patch_embed, "norm", None)):
        raise _refuse(model, "patch_embed has a norm layer (embed_norm_layer)")
    if not len(model.blocks):
        raise _refuse(model, "the model has no blocks")
    blocks = tuple(_block(model, f"blocks.{i}", block, dim) for i, block in enumerate(model.blocks))

    pairs: list[NormPair] = []
    for b in blocks:
        readers = [(f"{b.name}.attn.qkv", b.qkv)]
        if b.gate is not None:
            readers.append((f"{b.name}.attn.gate", b.gate))
        pairs.append(NormPair(f"{b.name}.norm1", b.norm1, tuple(readers)))
        pairs.append(NormPair(f"{b.name}.norm2", b.norm2, ((f"{b.name}.mlp.fc1", b.fc1),)))

    pool = model.global_pool
    final = None
    if isinstance(model.head, nn.Linear) and pool in LINEAR_POOLS and model.attn_pool is None:
        if _is_ln(model.fc_norm):
            final = "fc_norm"
        elif _is_ln(model.norm) and _is_identity(model.fc_norm):
            final = "norm"
    if final is not None:
        pairs.append(NormPair(final, getattr(model, final), (("head", model.head),)))
    return VitLayout(dim=dim, blocks=blocks, pairs=tuple(pairs), final=final, pool=pool)
