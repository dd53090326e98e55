"""Static post-training quantization with torchao's pt2e flow (export -> prepare -> calibrate ->
convert), plus the graph inspection that says which layers really hold int8 weights.

A converted pt2e graph run eagerly *emulates* int8: it quantizes and dequantizes in fp32 around
float kernels. ``lower`` compiles it with inductor (x86), which fuses the quantize/dequantize
patterns into oneDNN int8 kernels (``vitquant.quant.lowered``); only that is timed as int8 speed.
Each quantizer, and how the model is traced for it, comes from its backend
(``vitquant.quant.backends``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.evaluate import QUANTIZABLE
from vitquant.quant.backends import get_backend
from vitquant.quant.configs import StaticPTQ, check_backend
from vitquant.quant.scope import IgnoreScope, ResolvedScope, resolve_modules

# aten ops whose second argument is a weight: the ops a Linear/Conv module lowers to.
WEIGHT_OPS = {
    torch.ops.aten.linear.default,
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
}
INT8_DTYPES = (torch.int8, torch.uint8)


@dataclass
class QuantizedModel:
    """A converted pt2e model and what it really contains.

    Attributes:
        module: the converted ``torch.fx.GraphModule`` (quantize/dequantize ops + int8 weights).
        int8_layers: quantizable module names whose weight is an int8 constant in the graph.
        float_layers: quantizable module names that kept float weights.
        ignored: module names the ignore list kept in float.
        notes: remarks from resolving the ignore list and from quantizing.
        config: the recipe used.
        example: an input batch the graph was exported with (for saving/lowering).
    """

    module: torch.fx.GraphModule
    int8_layers: list[str]
    float_layers: list[str]
    ignored: list[str]
    notes: list[str] = field(default_factory=list)
    config: object = None
    example: torch.Tensor | None = None
    calibration: object = field(default=None, repr=False)  # CalibrationCache of its observers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


# ---------------------------------------------------------------------------------------------
# Quantizers: each backend of ``vitquant.quant.backends`` makes its own.


def make_quantizer(
    *,
    backend: str = "x86",
    per_channel: bool = True,
    symmetric_activations: bool = False,
    observer: str | None = None,
    percentile: float = 99.99,
    is_qat: bool = False,
    is_dynamic: bool = False,
    ignore: Iterable[str] = (),
    plan=None,
    layers: Iterable[str] = (),
    int8_matmul: bool = False,
):
    """A pt2e ``Quantizer`` for ``backend`` that keeps the ``ignore`` modules in float.

    Args:
        backend: a pt2e backend of ``vitquant.quant.backends``: ``x86`` (torchao's
            ``X86InductorQuantizer``, uint8 asymmetric activations) or ``xnnpack`` (ExecuTorch's
            ``XNNPACKQuantizer``, int8 activations).
        per_channel, symmetric_activations, observer, percentile, is_qat, is_dynamic: the
            recipe; ``observer`` None is the backend's ``default_observer``.
        ignore: resolved module names (see ``IgnoreScope.resolve``) to leave unannotated.
        plan: a ``BitsPlan`` narrowing the backend's ranges (``lowbit.narrow``): its default
            everywhere, its rules on the matching ``layers`` (the quantizable layer names).
            None: the backend's int8.
        int8_matmul: also annotate ``torch.matmul`` (x86: ``StaticPTQ.int8_attention``).
    """
    target = get_backend(check_backend(backend))
    bits: dict = {}
    if plan is not None:
        from vitquant.quant.lowbit.narrow import bits_overrides

        bits = dict(default_bits=plan.default, layer_bits=bits_overrides(plan, layers, ignore))
    quantizer = target.make_quantizer(
        list(ignore),
        **bits,
        per_channel=per_channel,
        symmetric_activations=symmetric_activations,
        observer=observer or target.default_observer,
        percentile=percentile,
        is_qat=is_qat,
        is_dynamic=is_dynamic,
    )
    if int8_matmul:  # both inputs of every matmul between activations, at the global config
        quantizer.set_function_type_qconfig(
            torch.matmul, quantizer.get_global_quantization_config()
        )
    return quantizer


def use_int8_attention(model: nn.Module) -> list[str]:
    """Put ``model``'s timm attention blocks (in place) in the layout of the fused int8
    attention kernel (``vitquant.quant.x86_attention``); returns the notes for the result."""
    from vitquant.quant import x86_attention

    tokens = x86_attention.token_count(model)
    switched = x86_attention.use_int8_attention_layout(model, tokens) if tokens else 0
    if not switched:
        return ["int8_attention: no plain timm attention block found, nothing to fuse"]
    notes = [f"int8_attention: {switched} attention block(s) with int8 q@k^T and attn@v"]
    if not x86_attention.available():
        notes.append(
            "int8_attention: this CPU has no AMX, so inductor has no fused int8 attention "
            "kernel here; the attention matmuls run as quantize/dequantize around float ones"
        )
    return notes


def edge_friendly_attention(model: nn.Module, backend: str):
    """The context ``backend`` traces ``model`` in (``Backend.tracing``); yields the number of
    modules traced differently, e.g. xnnpack's attention blocks without fused SDPA."""
    return get_backend(backend).tracing(model)


# ---------------------------------------------------------------------------------------------
# Export, quantize, inspect


def export_model(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = True):
    """``torch.export`` ``model`` (eval mode) and return the exported ``GraphModule``.

    The batch dimension is dynamic (when the example has at least 2 images), so one graph serves
    batch 1 and batch 32.
    """
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch and example.shape[0] >= 2:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    except Exception:  # a model that specialises on the batch size: export it static
        if dynamic_shapes is None:
            raise
        program = torch.export.export(model, (example,))
    return program.module()


def _module_of(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path or None


def weight_dtypes(gm: torch.fx.GraphModule) -> dict[str, torch.dtype]:
    """Module name -> dtype of the weight tensor its Linear/Conv op reads in the graph.

    A quantized layer's weight reaches the op through ``dequantize(int8 constant)``; a float
    layer reads its float parameter directly.
    """
    out: dict[str, torch.dtype] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in WEIGHT_OPS or len(node.args) < 2:
            continue
        name = _module_of(node)
        if name is None:
            continue
        w = node.args[1]
        while (
            isinstance(w, torch.fx.Node)
            and w.op == "call_function"
            and "dequantize" in str(w.target)
        ):
            w = w.args[0]
        dtype = None
        if isinstance(w, torch.fx.Node) and w.op == "get_attr":
            dtype = _get_attr(gm, w.target).dtype
        elif isinstance(w, torch.fx.Node) and isinstance(w.meta.get("val"), torch.Tensor):
            dtype = w.meta["val"].dtype
        if dtype is not None:
            out[name] = dtype
    return out


def drop_unused_attributes(gm: torch.fx.GraphModule) -> list[str]:
    """Delete parameters/buffers no ``get_attr`` node reads (the float weights that conversion
    replaced by int8 constants), so a saved artifact holds only what the graph uses."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    dropped = []
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name in used:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        delattr(owner, leaf)
        dropped.append(name)
    return dropped


def _get_attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def split_int8(model: nn.Module, gm: torch.fx.GraphModule) -> tuple[list[str], list[str]]:
    """(int8 layers, float layers): Linear/Conv names split by their weight dtype in ``gm``."""
    dtypes = weight_dtypes(gm)
    names = [n for n, m in model.named_modules() if n and isinstance(m, QUANTIZABLE)]
    int8 = [n for n in names if dtypes.get(n) in INT8_DTYPES]
    return int8, [n for n in names if n not in int8]


def resolve_scope(model: nn.Module, ignore) -> ResolvedScope:
    """``ignore`` (a ``ResolvedScope``, an ``IgnoreScope``, names/globs or None) resolved on
    ``model``."""
    if isinstance(ignore, ResolvedScope):
        return ignore
    if isinstance(ignore, IgnoreScope) or ignore is None:
        return resolve_modules(model, ignore)
    return resolve_modules(model, IgnoreScope.from_cli(list(ignore)))


def open_calibration(bundle: DataBundle, spec, cfg, *, progress: str | None = None):
    """``(first batch, the other batches, export example)`` of ``cfg``'s calibration images.

    One pass over ``calib``: its first batch is also the export example (up to 8 images, at
    least 2 so the batch dimension stays dynamic). ``cfg`` has ``calib`` and ``calib_batch``.
    """
    batches = bundle.batches(
        "calib", spec, batch_size=cfg.calib_batch, limit=cfg.calib, progress=progress
    )
    first = next(batches, None)
    if first is None:
        raise VitquantError("no calibration images: pass --calib N with N > 0.")
    example = first[0][: min(len(first[0]), 8)]
    if example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)
    return first, batches, example


def convert_prepared(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``convert_pt2e``, made callable with ``.eval()`` and stripped of the float weights it
    replaced."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # so evaluate.accuracy may call .eval()
    drop_unused_attributes(converted)
    return converted


@torch.no_grad()
def quantize_static(
    model: nn.Module,
    bundle: DataBundle,
    spec,
    cfg: StaticPTQ = StaticPTQ(),
    *,
    ignore: IgnoreScope | ResolvedScope | Iterable[str] = (),
    progress: str | None = None,
    calibration=None,
) -> QuantizedModel:
    """Static PTQ: export, annotate (keeping ``ignore`` in float), calibrate on ``calib``, convert.

    Args:
        model: the float model (not modified).
        bundle: data; calibration uses its ``calib`` role (``cfg.calib`` images).
        spec: the model's ``ModelSpec``.
        cfg: the recipe.
        ignore: an ``IgnoreScope``, a ``ResolvedScope`` or a list of names/globs.
        progress: a description to show a progress bar over calibration batches.
        calibration: the ``CalibrationCache`` of an earlier call with the same model, data and
            recipe and fewer layers ignored (``QuantizedModel.calibration``): its observer
            states are loaded instead of running the calibration images again (same result).
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from vitquant.quant.calibration import CalibrationCache

    model = copy.deepcopy(model).eval()
    scope = resolve_scope(model, ignore)
    first, batches, example = open_calibration(bundle, spec, cfg, progress=progress)
    notes = list(scope.notes)
    if cfg.int8_attention:
        notes += use_int8_attention(model)
    with get_backend(cfg.backend).tracing(model) as n_unfused:
        graph = export_model(model, example)
    if n_unfused:
        notes.append(
            f"{n_unfused} attention block(s) exported with the explicit softmax path "
            "(fused SDPA's masking ops do not lower to XNNPACK)"
        )
    quantizer = make_quantizer(
        backend=cfg.backend,
        per_channel=cfg.per_channel,
        symmetric_activations=cfg.symmetric_activations,
        observer=cfg.observer,
        percentile=cfg.percentile,
        ignore=scope.modules,
        int8_matmul=cfg.int8_attention,
    )
    prepared = prepare_pt2e(graph, quantizer)
    if calibration is None or not calibration.load_into(prepared):
        with torch.no_grad():
            for x, _ in itertools.chain([first], batches):
                prepared(x)
    batches.close()  # stops a DataLoader's workers when the cache made the rest unnecessary
    cache = CalibrationCache.from_prepared(prepared)
    converted = convert_prepared(prepared)
    int8, floats = split_int8(model, converted)
    return QuantizedModel(
        module=converted,
        int8_layers=int8,
        float_layers=floats,
        ignored=list(scope.modules),
        notes=notes,
        config=cfg,
        example=example,
        calibration=cache,
    )
