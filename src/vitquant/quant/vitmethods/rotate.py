"""Rotate a ViT's residual stream by a randomized Hadamard matrix, fused into the weights (QuaRot).

A few channels of a ViT's residual stream carry values 10-100x the rest, and LayerNorm's gamma
keeps them; a per-tensor 4-8 bit quantizer of a Linear's input spends its range on them. An
orthogonal ``Q`` spreads each outlier over many channels while leaving inner products alone, and
can be fused into the weights so the float model computes exactly the same function. Steps
(row vectors: a token is ``x`` of shape (d,), a Linear computes ``x W^T + b``):

(a) centre every writer into the stream: with ``C = I - 11^T / d``, ``W' = C W``, ``b' = C b``
    for ``patch_embed.proj``, ``attn.proj`` and ``mlp.fc2`` (their LayerScale gamma folded in
    first, ``W' = diag(gamma) W``), and ``cls_token``/``reg_token``/``pos_embed`` minus their
    mean. The stream is then a sum of zero-mean vectors, so every LayerNorm's mean is 0 and
    ``LayerNorm(x) = gamma * x / sqrt(mean(x^2) + eps) + beta``;
(b) fold each LayerNorm's affine into the Linears reading it (``W' = W diag(gamma)``,
    ``b' = b + W beta``) and replace it by ``nn.RMSNorm(d, eps=ln.eps,
    elementwise_affine=False)``;
(c) rotate: the stream becomes ``x Q``: writers ``W' = Q^T W``, ``b' = Q^T b``, embeddings
    ``t' = t Q``, readers ``W' = W Q``. RMSNorm commutes with ``Q`` (it keeps norms), and so do
    ``token``/``avg`` pooling before the head (they are linear over tokens);
(d) with ``online_fc2``, an ``OnlineHadamard`` module computes ``u H`` on ``mlp.fc2``'s input
    (placed in timm's ``mlp.norm`` slot, between the activation and fc2) and fc2 absorbs it
    (``W' = W H``): the quantizer of fc2's input then sees the rotated GELU output.

The matrices (``rotation_matrix``): ``Q = diag(s) H_n / sqrt(n)`` with Sylvester's ``H_n`` and
seeded random signs ``s`` when ``n`` is a power of two (signs first, then the mixing: random
signs after the Hadamard would not change any channel's magnitude). For other ``n``, with
``b`` the largest power of two dividing ``n`` (DeiT-S: 384 = 3 x 128, 1536 = 3 x 512), the
block-diagonal ``diag(s) (I_{n/b} kron H_b) / sqrt(b)`` when ``b >= 16``: each outlier is spread
over ``b`` channels instead of ``n``, and the online transform stays a fast Walsh-Hadamard
transform (``n log2 b`` additions, no matmul). Below 16 a seeded random orthogonal matrix (QR
of a Gaussian) is used, applied online as a dense matmul.
"""

from __future__ import annotations

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.vitmethods.fold import linear_params, ln_affine, set_linear
from vitquant.quant.vitmethods.layout import VitLayout, vit_layout

MIN_BLOCK = 16  # smallest Hadamard block used for a dimension that is not a power of two


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix of order ``n`` (a power of two), entries +-1, float64 (n, n).

    ``H_1 = [1]``, ``H_2k = [[H_k, H_k], [H_k, -H_k]]``; ``H H^T = n I``.
    """
    if n < 1 or n & (n - 1):
        raise VitquantError(f"a Sylvester Hadamard matrix needs a power-of-two order, not {n}.")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _block(n: int) -> int:
    """The largest power of two dividing ``n``."""
    return n & -n


def random_signs(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random +-1 values (float64) drawn from ``generator``."""
    return torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1


def _blocks(n: int, b: int) -> torch.Tensor:
    """``blockdiag(H_b, ..., H_b) / sqrt(b)``, float64 (n, n)."""
    return torch.block_diag(*[hadamard(b)] * (n // b)) / b**0.5


def _parts(n: int, seed: int) -> tuple[str, int, torch.Tensor]:
    """``(kind, b, signs (n,))`` of a randomized (block) Hadamard, or
    ``("random-orthogonal", 0, Q (n, n))``."""
    gen = torch.Generator().manual_seed(seed)
    b = _block(n)
    if b == n or b >= MIN_BLOCK:
        return ("hadamard" if b == n else f"block-hadamard {n // b}x{b}"), b, random_signs(n, gen)
    g = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return "random-orthogonal", 0, q * torch.sign(torch.diagonal(r))[None, :]


def rotation_matrix(n: int, *, seed: int = 0) -> tuple[torch.Tensor, str]:
    """The orthogonal ``(n, n)`` float64 matrix of the module docstring, and its description.

    Args:
        n: dimension.
        seed: seed of the random signs (or of the Gaussian for a random orthogonal matrix).
    """
    kind, b, values = _parts(n, seed)
    if not b:
        return values, kind
    return values[:, None] * _blocks(n, b), kind  # diag(s) @ blockdiag(H_b) / sqrt(b)


class OnlineHadamard(nn.Module):
    """``u -> u H`` over the last dimension, ``H`` from ``rotation_matrix(n, seed=seed)``.

    A randomized (block) Hadamard ``H = diag(s) blockdiag(H_b) / sqrt(b)`` runs as a sign flip
    and ``log2(b)`` butterfly stages of a fast Walsh-Hadamard transform; a dense random
    orthogonal ``H`` as a matmul. ``matrix()`` gives ``H`` for folding into the next Linear.
    """

    def __init__(self, n: int, *, seed: int = 0) -> None:
        super().__init__()
        self.kind, self.block, values = _parts(n, seed)
        self.n = n
        # signs (n,) for a Hadamard, the dense matrix (n, n) otherwise
        self.register_buffer("values", values.float())

    def matrix(self) -> torch.Tensor:
        """``H`` as a float64 (n, n) matrix."""
        if not self.block:
            return self.values.double()
        return self.values.double()[:, None] * _blocks(self.n, self.block)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if not self.block:
            return u @ self.values  # (..., n) @ (n, n)
        x = u * self.values  # (..., n) random signs
        h = 1
        while h < self.block:  # butterflies (a, c) -> (a + c, a - c) at distance h
            x = x.unflatten(-1, (self.n // (2 * h), 2, h))  # (..., n / 2h, 2, h)
            a, c = x[..., 0, :], x[..., 1, :]  # (..., n / 2h, h) each
            x = torch.stack((a + c, a - c), dim=-2).flatten(-3)  # (..., n)
            h *= 2
        return x * self.block**-0.5

    def extra_repr(self) -> str:
        return f"n={self.n}, kind={self.kind!r}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _check(model: nn.Module, layout: VitLayout) -> None:
    """Refuse what the rotation cannot keep exact."""
    problem = None
    if not isinstance(model.norm_pre, nn.Identity):
        problem = "norm_pre is a LayerNorm (pre_norm=True): the stream does not start centred"
    elif layout.final is None:
        problem = (
            f"the head does not read a LayerNorm through token/avg pooling (global_pool="
            f"{layout.pool!r}, head {type(model.head).__name__}): its input would stay rotated"
        )
    elif layout.final == "fc_norm" and not isinstance(model.norm, nn.Identity):
        problem = "both norm and fc_norm are LayerNorms"
    if problem:
        raise VitquantError(
            f"rotate: {problem}. It supports DeiT-style ViTs with a Linear head after a final "
            "LayerNorm and token or avg pooling; use ln-reparam or smoothquant for this model."
        )


def _write(linear: nn.Linear, a: torch.Tensor, gamma: torch.Tensor | None, h=None) -> None:
    """A writer ``y = u W^T + b`` into the stream becomes ``(gamma * y) A^T`` (optionally reading
    ``u H`` instead of ``u``): ``W' = A diag(gamma) W H``, ``b' = A (gamma * b)``."""
    w, b = linear_params(linear)  # (d, in), (d,)
    if gamma is not None:
        w, b = gamma[:, None] * w, gamma * b
    w = a @ w  # (d, in)
    if h is not None:
        w = w @ h  # (d, in) @ (in, in)
    set_linear(linear, w, a @ b if linear.bias is not None else None)


def _layerscale(block_ls: nn.Module) -> torch.Tensor | None:
    gamma = getattr(block_ls, "gamma", None)
    return gamma.detach().double() if gamma is not None else None


def hadamard_rotate(model: nn.Module, *, seed: int = 0, online_fc2: bool = True) -> dict:
    """Centre, fold LayerNorms into RMSNorms and rotate a DeiT-style ViT in place (see above).

    Call it on a copy (``copy.deepcopy``) when the original must stay as it was. Apply it after
    ``ln-reparam``/``smoothquant`` if combining: it replaces the LayerNorms they edit.

    Args:
        model: a timm ``VisionTransformer`` (float, modified in place).
        seed: seed of the random signs.
        online_fc2: insert an ``OnlineHadamard`` before each ``mlp.fc2`` and fold it into fc2.

    Returns:
        ``{"method", "dim", "rotation", "seed", "online_fc2", "online_rotation",
        "layernorms_replaced", "layerscales_folded"}``.

    Raises:
        VitquantError: not a DeiT-style ViT, or one whose head the rotation cannot reach.
    """
    layout = vit_layout(model)
    _check(model, layout)
    d = layout.dim
    q, kind = rotation_matrix(d, seed=seed)  # (d, d)
    centre = torch.eye(d, dtype=torch.float64) - 1.0 / d  # C = I - 11^T / d
    a = q.T @ centre  # writers: y -> Q^T C y (column form); rows: t -> t C Q

    with torch.no_grad():
        # (a) + (c) writers: the patch embedding, the prefix tokens and the position embedding.
        conv = model.patch_embed.proj
        w = conv.weight.detach().double()  # (d, c_in, kh, kw)
        conv.weight.copy_((a @ w.reshape(d, -1)).reshape(w.shape).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.copy_((a @ conv.bias.double()).to(conv.bias.dtype))
        for name in ("cls_token", "reg_token", "pos_embed"):
            t = getattr(model, name, None)
            if isinstance(t, torch.Tensor):
                t.copy_((t.double() @ a.T).to(t.dtype))  # (1, N, d) @ (d, d)

    online = None
    folded = 0
    for b in layout.blocks:
        h = None
        if online_fc2:
            rot = OnlineHadamard(b.fc2.in_features, seed=seed + 1)
            h, online = rot.matrix(), rot.kind
            if isinstance(b.mlp.norm, nn.Identity):
                b.mlp.norm = rot
            else:
                b.mlp.norm = nn.Sequential(b.mlp.norm, rot)
        for writer, ls, attr, hh in ((b.proj, b.ls1, "ls1", None), (b.fc2, b.ls2, "ls2", h)):
            gamma = _layerscale(ls)
            _write(writer, a, gamma, hh)
            if gamma is not None:
                setattr(model.get_submodule(b.name), attr, nn.Identity())
                folded += 1

    # (b) + (c) readers: fold each LayerNorm's affine and the rotation, then swap in RMSNorm.
    replaced = []
    for pair in layout.pairs:
        gamma, beta = ln_affine(pair.norm)  # (d,), (d,)
        for _, reader in pair.readers:
            w, bias = linear_params(reader)  # (out, d), (out,)
            set_linear(reader, (w * gamma[None, :]) @ q, bias + w @ beta)
        _set_module(
            model,
            pair.name,
            nn.RMSNorm(d, eps=pair.norm.eps, elementwise_affine=False),
        )
        replaced.append(pair.name)
    return {
        "method": "rotate",
        "dim": d,
        "rotation": kind,
        "seed": seed,
        "online_fc2": bool(online_fc2),
        "online_rotation": online,
        "layernorms_replaced": replaced,
        "layerscales_folded": folded,
    }
