"""GPTQ: error-compensating rounding of Linear weights to a low-bit grid (Frantar et al. 2022).

The grid (a contract with the low-bit quantizer that reuses these weights): per output channel,
symmetric, restricted range. For ``b`` bits ``qmax = 2^(b-1) - 1``, codes lie in
``[-qmax, qmax]``, the zero point is 0 and ``scale_c = max|W_c| / qmax`` is computed from the
*original* row ``W_c`` (before any GPTQ update); a dequantized weight is ``code * scale_c``.
Rounding is half-to-even (``torch.round``). An all-zero row gets scale 1 (every code is 0).

The problem, per Linear layer ``Y = X W^T`` with ``X`` (N tokens, in): find grid weights ``Q``
minimising ``||X W^T - X Q^T||_F^2``. Each row ``w`` of ``W`` is independent, with the loss
``(w - q) H (w - q)^T`` and the Hessian ``H = 2/N X^T X`` (in, in), shared by all rows.

The algorithm, from the paper's equations:

1. Dampen: ``H += damp * mean(diag H) * I``. An input that is always 0 (``H_jj = 0``) is
   "dead": ``H_jj = 1`` and ``W[:, j] = 0`` (any value there is lost anyway).
2. Optimal Brain Surgeon update: quantizing column ``j`` to ``q_j`` with error
   ``w_j - q_j`` is best compensated on the columns ``F`` not yet quantized by
   ``delta_F = -(w_j - q_j) / [H_F^-1]_jj * [H_F^-1]_{j,F}``, where ``H_F^-1`` is the inverse
   Hessian restricted to ``F``. Quantizing the columns in a fixed order ``0, 1, ...`` (the same
   for every row) makes ``F = {j, ..., in-1}``, and the rows ``j`` of those successive inverses
   are, up to a scale, the rows of the upper Cholesky factor ``U`` of ``H^-1``
   (``H^-1 = U^T U``): ``[H_F^-1]_{j,F} / sqrt([H_F^-1]_jj) = U[j, j:]``. So with
   ``err_j = (w_j - q_j) / U_jj`` the update is ``W[:, j:] -= err_j U[j, j:]``.
3. Lazy blocks: within a block of ``block`` columns the update is applied column by column to
   the block only; the scaled errors ``E`` (out, block) of the block then update every later
   column at once, ``W[:, i2:] -= E @ U[i1:i2, i2:]`` (one matrix product instead of ``block``
   rank-1 updates; the result is the same).

On a model (``gptq``), the Linear layers are quantized one after another in forward order, each
from the Hessian of its inputs in the model whose earlier Linear layers are already quantized,
so each layer also compensates the error of the layers before it. The patch embedding (a
Conv2d) is not touched: it stays in float here, and a quantizer that quantizes it rounds it to
nearest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.lowbit.bits import check_bits
from vitquant.quant.lowbit.numerics import weight_range
from vitquant.quant.scope import resolve_modules

DEFAULT_DAMP = 0.01
DEFAULT_BLOCK = 128


def grid_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scales of the grid: ``max|W_c| / (2^(bits-1) - 1)``, shape (out,)
    (the low-bit quantizer's weight grid, ``numerics.weight_range``)."""
    _, qmax = weight_range(bits)
    amax = weight.detach().abs().amax(dim=1)  # (out,)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def round_to_grid(w: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` (out,) or (out, k) onto the grid of ``scales`` (out,); dequantized values."""
    _, qmax = weight_range(bits)
    s = scales if w.dim() == 1 else scales[:, None]
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


def rtn_quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest onto the same grid (GPTQ's baseline): ``(W_hat, scales)``."""
    scales = grid_scales(weight, bits)
    return round_to_grid(weight.detach(), scales, bits).to(weight.dtype), scales


def gptq_quantize_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    *,
    damp: float = DEFAULT_DAMP,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one weight matrix with GPTQ (see the module docstring).

    Args:
        weight: ``W`` (out, in).
        hessian: ``H = 2/N X^T X`` of the layer's inputs (in, in).
        bits: grid bits, 2 to 8.
        damp: fraction of the mean diagonal added to the diagonal of ``H``.
        block: columns per lazy block.

    Returns:
        ``(W_hat, scales)``: the dequantized grid weights (out, in), in ``weight``'s dtype, and
        the per-channel scales (out,) they lie on.

    Raises:
        VitquantError: bad shapes or options, or ``H`` not positive definite after damping.
    """
    check_bits(bits)
    if weight.dim() != 2:
        raise VitquantError(f"GPTQ quantizes 2-D Linear weights, got shape {tuple(weight.shape)}.")
    cols = weight.shape[1]
    if tuple(hessian.shape) != (cols, cols):
        raise VitquantError(
            f"the Hessian has shape {tuple(hessian.shape)}; a weight with {cols} input features "
            f"needs ({cols}, {cols}) (collect it from this layer's inputs)."
        )
    if not damp >= 0:
        raise VitquantError(f"damp must be >= 0 (e.g. 0.01), got {damp!r}.")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise VitquantError(f"block must be a positive integer (e.g. 128), got {block!r}.")

    scales = grid_scales(weight, bits)  # (out,), from the original weights
    w = weight.detach().clone().float()  # (out, in), updated in place
    h = hessian.detach().clone().double()  # (in, in)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    try:
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))  # (in, in) = H^-1
        u = torch.linalg.cholesky(hinv, upper=True).float()  # (in, in), H^-1 = U^T U
    except torch.linalg.LinAlgError as exc:
        raise VitquantError(
            f"the Hessian is not positive definite after damping with damp={damp}; "
            "raise damp (e.g. 0.1) or calibrate on more images."
        ) from exc

    q = torch.zeros_like(w)  # (out, in)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        wb = w[:, i1:i2].clone()  # (out, B)
        ub = u[i1:i2, i1:i2]  # (B, B)
        errs = torch.zeros_like(wb)  # (out, B): (w_j - q_j) / U_jj
        for j in range(i2 - i1):
            qj = round_to_grid(wb[:, j], scales, bits)  # (out,)
            q[:, i1 + j] = qj
            errs[:, j] = (wb[:, j] - qj) / ub[j, j]
            wb[:, j + 1 :] -= errs[:, j : j + 1] @ ub[j : j + 1, j + 1 :]
        w[:, i2:] -= errs @ u[i1:i2, i2:]  # the block's errors on every later column
    return q.to(weight.dtype), scales


# ---------------------------------------------------------------------------------------------
# Calibration: the Hessians of Linear inputs.


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def _inputs(batches) -> list[torch.Tensor]:
    """Calibration batches -> a list of input tensors (``x`` or ``(x, y)`` items)."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    out = []
    for item in batches:
        x = item[0] if isinstance(item, tuple | list) else item
        if not isinstance(x, torch.Tensor):
            raise VitquantError(
                f"calibration batches must be tensors or (images, labels) pairs, got "
                f"{type(x).__name__}."
            )
        out.append(x)
    if not out:
        raise VitquantError("no calibration batches: pass at least one batch of images.")
    return out


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and no grad for the block (training mode restored); yields the model's device."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next((p.device for p in model.parameters()), torch.device("cpu"))
    finally:
        model.train(was)


def _linears(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Linear]:
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if not isinstance(modules.get(name), nn.Linear):
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise VitquantError(
                f"{name!r} is not a Linear layer of the model (Linear layers: "
                f"{', '.join(linears[:6])}{', ...' if len(linears) > 6 else ''})."
            )
        out[name] = modules[name]
    return out


def _run(module: nn.Module, xs: list[torch.Tensor], *, hooks: dict[nn.Module, Callable]) -> list:
    """``module(x)`` for each ``x`` with forward pre-hooks; a pass a hook stops returns None."""
    handles = [m.register_forward_pre_hook(h) for m, h in hooks.items()]
    outs = []
    try:
        with _eval(module) as device:
            for x in xs:
                try:
                    outs.append(module(x.to(device)))
                except _Stop:
                    outs.append(None)
    finally:
        for h in handles:
            h.remove()
    return outs


def _hessian_hooks(layers: dict[str, nn.Linear], stop_after: str | None):
    """Pre-hooks accumulating ``X^T X`` per layer, and a function returning ``2/N X^T X``."""
    sums = {
        n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in layers.items()
    }
    rows = dict.fromkeys(layers, 0)

    def make(name: str):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double().cpu()  # (B*N, in)
            sums[name] += x.T @ x
            rows[name] += x.shape[0]
            if name == stop_after:
                raise _Stop

        return hook

    hooks = {m: make(n) for n, m in layers.items()}
    return hooks, lambda: {n: 2.0 * sums[n] / max(rows[n], 1) for n in layers}


def collect_hessians(
    model: nn.Module, batches: Iterable, names: Iterable[str]
) -> dict[str, torch.Tensor]:
    """``H = 2/N sum X^T X`` of each named Linear's input over the calibration batches.

    Tokens are flattened (an input (B, N, in) adds B*N rows). A layer that never runs gets a
    zero Hessian.

    Args:
        model: the model (run in eval mode, without gradients).
        batches: tensors or ``(images, labels)`` pairs.
        names: Linear module names.

    Returns:
        name -> ``H`` (in, in), float64.
    """
    hooks, result = _hessian_hooks(_linears(model, list(names)), None)
    _run(model, _inputs(batches), hooks=hooks)
    return result()


# ---------------------------------------------------------------------------------------------
# The model-level pass.


@dataclass
class _Plan:
    """Forward order of the layers, and the chain of blocks whose inputs can be cached.

    ``chain`` is an ``nn.Sequential`` (timm's ``blocks``) called once per forward, whose
    children each run once: the output of block k is then the input of block k + 1, so a
    block's layers are calibrated by running that block alone on its cached inputs.
    """

    order: list[str]
    repeated: set[str]
    chain: list[nn.Module] = field(default_factory=list)
    block_of: dict[str, int] = field(default_factory=dict)


def _plan(model: nn.Module, x: torch.Tensor, names: list[str]) -> _Plan:
    layers = _linears(model, names)
    seqs = [
        (n, m)
        for n, m in model.named_modules()
        if type(m) is nn.Sequential and len(m) > 1 and m is not model
    ]
    # the Sequential holding the most layers (timm ViT: ``blocks``)
    best = max(seqs, key=lambda s: sum(n.startswith(f"{s[0]}.") for n in names), default=None)
    watched = {m: n for n, m in layers.items()}
    children = [] if best is None else [f"{best[0]}.{c}" for c, _ in best[1].named_children()]
    if best is not None:
        watched.update({best[1]: best[0], **dict(zip(best[1], children, strict=True))})
    calls: list[str] = []
    hooks = {m: (lambda _m, _a, n=n: calls.append(n)) for m, n in watched.items()}
    _run(model, [x], hooks=hooks)
    plan = _Plan(
        [n for n in dict.fromkeys(calls) if n in layers], {n for n in calls if calls.count(n) > 1}
    )
    if best is not None and all(calls.count(b) == 1 for b in [best[0], *children]):
        plan.chain = list(best[1])
        for n in plan.order:
            for k, child in enumerate(children):
                if n.startswith(f"{child}."):
                    plan.block_of[n] = k
    return plan


def _block_inputs(model: nn.Module, block: nn.Module, inputs: list[torch.Tensor]) -> list:
    """The inputs ``block`` receives when ``model`` runs on each batch (the pass stops there)."""
    seen: list[torch.Tensor] = []

    def grab(_mod, args):
        seen.append(args[0].detach())
        raise _Stop

    _run(model, inputs, hooks={block: grab})
    return seen


def _bits_of(wbits: Callable[[str], int | None] | int) -> Callable[[str], int | None]:
    if callable(wbits):
        return lambda name: (
            None if (b := wbits(name)) is None else check_bits(b, f"wbits({name!r})")
        )
    check_bits(wbits, "wbits")
    return lambda _name: wbits


def gptq(
    model: nn.Module,
    batches: Iterable,
    *,
    wbits: Callable[[str], int | None] | int = 4,
    ignore: Iterable[str] = (),
    damp: float = DEFAULT_DAMP,
    block: int = DEFAULT_BLOCK,
) -> dict[str, torch.Tensor]:
    """Quantize every Linear layer of ``model`` onto the grid with GPTQ, in place.

    Layers are done one at a time in forward order; each layer's Hessian comes from the
    calibration batches run through the model whose earlier layers are already quantized. Inside
    a chain of blocks (timm's ``blocks``) only the layer's block runs, on its inputs cached from
    the quantized block before it; elsewhere the whole model runs, stopping at the layer.
    ``weight.data`` is set to the dequantized grid weights, so a quantizer with a fixed-scale
    weight observer on the returned scales reproduces them exactly. A Linear that never runs on
    the calibration batches is rounded to nearest.

    Args:
        model: the model to change (pass a copy to keep the float one).
        batches: calibration batches, tensors or ``(images, labels)`` pairs (held in memory).
        wbits: grid bits for every layer, or ``name -> bits`` (None keeps that layer in float).
        ignore: layers to keep in float (names, globs or types, as in ``IgnoreScope``).
        damp: Hessian dampening (fraction of its mean diagonal).
        block: columns per lazy block.

    Returns:
        name -> per-output-channel scales (out,) of every quantized layer, in forward order.

    Raises:
        VitquantError: bad options, an ignore entry matching no layer, or no batches.
    """
    bits_of = _bits_of(wbits)
    skipped = set(resolve_modules(model, list(ignore)).modules)
    targets: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name not in skipped:
            bits = bits_of(name)
            if bits is not None:
                targets[name] = bits
    inputs = _inputs(batches)
    layers = _linears(model, targets)
    plan = _plan(model, inputs[0], list(targets))
    scales: dict[str, torch.Tensor] = {}

    def quantize(name: str, hessian: torch.Tensor) -> None:
        weight = layers[name].weight
        w_hat, scales[name] = gptq_quantize_weight(
            weight.data, hessian, targets[name], damp=damp, block=block
        )
        weight.data.copy_(w_hat)

    last_of_block = {plan.block_of[n]: n for n in plan.order if n in plan.block_of}
    cached: tuple[int, list[torch.Tensor]] | None = None  # (block index, its inputs)
    for name in plan.order:
        # A layer called twice per forward needs every call: no early stop for it.
        hooks, result = _hessian_hooks(
            {name: layers[name]}, None if name in plan.repeated else name
        )
        k = plan.block_of.get(name)
        if k is None:
            _run(model, inputs, hooks=hooks)
            quantize(name, result()[name])
            continue
        if cached is None or cached[0] != k:
            cached = (k, _block_inputs(model, plan.chain[k], inputs))
        _run(plan.chain[k], cached[1], hooks=hooks)
        quantize(name, result()[name])
        if last_of_block[k] == name and k + 1 < len(plan.chain):
            # the block is done: its quantized outputs are the next block's inputs
            cached = (k + 1, [y.detach() for y in _run(plan.chain[k], cached[1], hooks={})])
    for name in targets.keys() - set(plan.order):  # never ran: nothing to compensate with
        weight = layers[name].weight
        w_hat, scales[name] = rtn_quantize_weight(weight.data, targets[name])
        weight.data.copy_(w_hat)
    return scales
