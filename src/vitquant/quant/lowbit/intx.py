"""8da4w: int8 dynamic activations x int4 weights, run by XNNPACK's 4-bit kernels in ExecuTorch.

``quantize_8da4w`` applies torchao's ``Int8DynamicActivationIntxWeightConfig`` with
``weight_dtype=torch.int4`` to the Linear layers of a copy of the model: each weight becomes an
``IntxUnpackedToInt8Tensor`` holding int4 codes in [-8, 7] (one int8 each, unpacked) with one
symmetric fp32 scale per group of ``group_size`` input features (or per output channel), and
each Linear's input is quantized at run time to int8, asymmetric, per token. The result runs in
PyTorch (eagerly emulated: dequantize, then a float matmul).

``lower_8da4w`` exports that model and lowers it with the XNNPACK partitioner; XNNPACK takes
the ``choose_qparams -> quantize -> dequantize -> linear`` pattern with int4 weights as one
dynamically quantized fully-connected operator with 4-bit blockwise weights, packs them two per
byte, and the ``.pte`` runs on its int4 kernels. ``Int4Export.linear_delegated`` says how many
``linear`` operators went to XNNPACK (executorch's ``get_delegation_info``). The program runs
with ``PteModel`` (``load_8da4w``), which splits batches larger than the planned one.

Lowering time grows with the number of Linear layers (each is a delegate subgraph): cifar_vit's
49 take minutes on a 2-core CPU with a dynamic batch, about half that with ``max_batch=1``
(a static one-image program, which ``PteModel`` runs image by image).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.io import atomic_write
from vitquant.quant.executorch_backend import (
    DEFAULT_MAX_BATCH,
    PteExport,
    PteModel,
    outside_ops,
)
from vitquant.quant.scope import resolve_modules

DEFAULT_GROUP_SIZE = 32
INT4_RANGE = (-8, 7)


def _config(group_size: int | None):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerAxis, PerGroup

    granularity = PerAxis(0) if group_size is None else PerGroup(group_size)
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=granularity
    )


def quantize_8da4w(
    model: nn.Module,
    *,
    group_size: int | None = DEFAULT_GROUP_SIZE,
    ignore: Iterable[str] = (),
    scales: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A copy of ``model`` whose Linear layers hold int4 weights and quantize inputs to int8.

    Args:
        model: the float model (left unchanged).
        group_size: input features sharing one weight scale; None: one scale per output channel.
            Must divide every quantized layer's ``in_features``.
        ignore: layers kept in float (names, globs or types, as in ``IgnoreScope``).
        scales: layer name -> fixed per-output-channel scales (out,), e.g. from ``gptq(...,
            wbits=4)``, whose weights already lie on ``code * scale`` with codes in [-7, 7]:
            those layers keep exactly these codes and scales (zero point 0) instead of
            torchao's own choice; needs ``group_size=None``.

    Returns:
        the torchao model, in eval mode (runs in PyTorch; lower it with ``lower_8da4w``).

    Raises:
        VitquantError: a bad group size, an ignore entry matching no layer, or ``scales`` for
            a layer that is not quantized or with the wrong shape.
    """
    from torchao.quantization import quantize_

    if group_size is not None and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    ):
        raise VitquantError(
            f"group_size must be a positive integer (e.g. 32) or None, got {group_size!r}."
        )
    skipped = set(resolve_modules(model, list(ignore)).modules)
    chosen = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skipped}
    if group_size is not None:
        for name, m in model.named_modules():
            if name in chosen and m.in_features % group_size:
                raise VitquantError(
                    f"group_size {group_size} does not divide the {m.in_features} input features "
                    f"of {name}; pick a divisor (e.g. 32 or 16), or ignore that layer."
                )
    scales = dict(scales or {})
    if scales and group_size is not None:
        raise VitquantError("fixed scales are per output channel: pass group_size=None.")
    quantized = copy.deepcopy(model).eval()
    modules = dict(quantized.named_modules())
    for name, scale in scales.items():
        if name not in chosen:
            raise VitquantError(f"scales given for {name!r}, which is not a quantized Linear.")
        _fixed_scale_weight(name, modules[name], scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(
            quantized,
            _config(group_size),
            filter_fn=lambda _m, name: name in chosen and name not in scales,
        )
    return quantized


def _fixed_scale_weight(name: str, module: nn.Linear, scale: torch.Tensor) -> None:
    """Put int4 codes ``round(W / scale)`` with the given per-channel scales into ``module``."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    w = module.weight.detach()  # (out, in)
    if tuple(scale.shape) != (w.shape[0],):
        raise VitquantError(
            f"scales[{name!r}] has shape {tuple(scale.shape)}; {name} needs ({w.shape[0]},), "
            "one per output channel."
        )
    s = scale.detach().to(w.dtype).reshape(-1, 1)  # (out, 1): one block per row
    q = IntxUnpackedToInt8Tensor.from_hp(
        w,
        (1, w.shape[1]),
        torch.int4,
        activation_quantization="int8_asym_per_token",
        intx_choose_qparams_algorithm=None,
        custom_scale=s,
        custom_zero_point=torch.zeros_like(s, dtype=torch.int8),
    )
    module.weight = nn.Parameter(q, requires_grad=False)


def int4_linears(model: nn.Module) -> list[str]:
    """Linear layers whose weight holds int4 codes (a torchao intx tensor, codes in [-8, 7])."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    names = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Linear) and isinstance(w, IntxUnpackedToInt8Tensor):
            codes = w.qdata
            if w.target_dtype == torch.int4 and codes.dtype == torch.int8:
                lo, hi = INT4_RANGE
                if int(codes.min()) >= lo and int(codes.max()) <= hi:
                    names.append(name)
    return names


def count_int4_linears(model: nn.Module) -> int:
    """How many Linear layers hold int4 weights (see ``int4_linears``)."""
    return len(int4_linears(model))


@dataclass
class Int4Export(PteExport):
    """A lowered 8da4w ``.pte`` (``PteExport``) and where its ``linear`` operators went.

    Attributes:
        linear_delegated: ``linear`` operators inside XNNPACK subgraphs.
        linear_outside: ``linear`` operators left to portable kernels (0 when all lowered).
        int4_layers: the Linear layers of the model that held int4 weights.
    """

    linear_delegated: int = 0
    linear_outside: int = 0
    int4_layers: list[str] = field(default_factory=list)


def lower_8da4w(
    model_8da4w: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Int4Export:
    """Export an 8da4w model and lower it to an XNNPACK ExecuTorch program (saved atomically).

    timm attention is traced through its explicit softmax path (as for the int8 XNNPACK
    programs: SDPA's masking ops do not lower).

    Args:
        model_8da4w: a ``quantize_8da4w`` result.
        example: an input batch (N, C, H, W); its image shape is used.
        path: the ``.pte`` to write.
        max_batch: the largest batch one call takes; 1 exports a static one-image program
            (faster to lower), more a dynamic batch dimension.

    Raises:
        VitquantError: no int4 layer in the model, or export/lowering failed.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    from vitquant.analysis.hooks import unfused_attention

    layers = int4_linears(model_8da4w)
    if not layers:
        raise VitquantError(
            "the model holds no int4 Linear layer; quantize it with quantize_8da4w."
        )
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise VitquantError(f"max_batch must be a positive integer, got {max_batch!r}.")
    if max_batch == 1:
        example, dims = example[:1].contiguous(), None
    else:
        example = example[:2].clone()
        if example.shape[0] < 2:  # a traced batch of 1 would be specialised
            example = example.repeat(2, *([1] * (example.dim() - 1)))
        dims = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    try:
        with warnings.catch_warnings(), unfused_attention(model_8da4w):
            warnings.simplefilter("ignore")
            program = torch.export.export(model_8da4w.eval(), (example,), dynamic_shapes=dims)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            graph = edge.exported_program().graph_module
            delegated, compute, layout = outside_ops(graph)
            by_op = get_delegation_info(graph).delegation_by_operator
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # export/lowering raise many types
        raise VitquantError(
            f"8da4w ExecuTorch lowering failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''})."
        ) from exc
    linear = by_op.get("aten_linear_default")

    def write(tmp: Path) -> None:
        tmp.write_bytes(buffer)

    saved = atomic_write(Path(path), write)
    return Int4Export(
        saved,
        PteModel(saved).max_batch,
        delegated,
        compute,
        layout,
        linear_delegated=linear.delegated if linear else 0,
        linear_outside=linear.non_delegated if linear else 0,
        int4_layers=layers,
    )


def load_8da4w(path: str | Path, *, threads: int | None = None) -> PteModel:
    """The lowered program as an ``x (N, C, H, W) -> logits`` callable (any batch size)."""
    return PteModel(path, threads=threads)
