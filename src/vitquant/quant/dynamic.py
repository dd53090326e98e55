"""Dynamic int8 quantization: int8 weights, activation ranges computed per batch at run time.

Backend: PyTorch's eager dynamic quantization (``torch.ao.quantization.quantize_dynamic``; it is
deprecated in favour of torchao but still the one CPU path with real int8 GEMM kernels - fbgemm /
oneDNN - for dynamic activations, so its latency is int8 speed, not emulation). It quantizes
``nn.Linear`` (and recurrent layers); PyTorch has no dynamic int8 convolution, so Conv layers stay
in float and are reported as float layers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.evaluate import QUANTIZABLE
from vitquant.quant.backends import get_backend
from vitquant.quant.configs import DynamicPTQ
from vitquant.quant.pt2e import (
    QuantizedModel,
    drop_unused_attributes,
    export_model,
    make_quantizer,
    resolve_scope,
    split_int8,
)
from vitquant.quant.scope import IgnoreScope, ResolvedScope, resolve_modules

SUPPORTED = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU}


def dynamic_int8_layers(model: nn.Module) -> list[str]:
    """Names of modules that run as dynamic int8 (their packed weight is qint8)."""
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and "quantized" in type(module).__module__:
            w = weight()
            if isinstance(w, torch.Tensor) and w.dtype in (torch.qint8, torch.quint8):
                out.append(name)
    return out


@torch.no_grad()
def quantize_dynamic(
    model: nn.Module,
    cfg: DynamicPTQ = DynamicPTQ(),
    *,
    ignore: IgnoreScope | ResolvedScope | Iterable[str] = (),
) -> QuantizedModel:
    """Dynamic int8 quantization of ``cfg.types`` layers, keeping ``ignore`` in float.

    Args:
        model: the float model (not modified; a copy is quantized).
        cfg: the recipe.
        ignore: an ``IgnoreScope``, a ``ResolvedScope`` or a list of names/globs.

    Returns:
        A ``QuantizedModel`` whose ``module`` is an eager ``nn.Module`` with int8 Linear layers.
    """
    from torch.ao.quantization import default_dynamic_qconfig
    from torch.ao.quantization import quantize_dynamic as ao_dynamic

    unknown = [t for t in cfg.types if t not in SUPPORTED]
    if unknown:
        raise VitquantError(
            f"dynamic int8 supports {', '.join(SUPPORTED)}; not {', '.join(unknown)}."
        )
    if cfg.engine not in torch.backends.quantized.supported_engines:
        raise VitquantError(
            f"quantized engine {cfg.engine!r} is not available here; choose one of "
            f"{', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')}."
        )
    torch.backends.quantized.engine = cfg.engine
    original = model
    model = copy.deepcopy(model).eval()
    if isinstance(ignore, ResolvedScope):
        scope = ignore
    elif isinstance(ignore, IgnoreScope) or ignore is None:
        scope = resolve_modules(model, ignore)
    else:
        scope = resolve_modules(model, IgnoreScope.from_cli(list(ignore)))
    spec: dict = {SUPPORTED[t]: default_dynamic_qconfig for t in cfg.types}
    for name in scope.modules:
        spec[name] = None  # a name entry overrides the type entry: keep it in float
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of torch.ao.quantization
        qmodel = ao_dynamic(model, spec, dtype=torch.qint8)
    int8 = dynamic_int8_layers(qmodel)
    names = [n for n, m in original.named_modules() if n and isinstance(m, QUANTIZABLE)]
    notes = list(scope.notes)
    convs = [n for n in names if isinstance(original.get_submodule(n), nn.Conv1d | nn.Conv2d)]
    if convs:
        notes.append(f"{len(convs)} Conv layers stay float: PyTorch has no dynamic int8 conv")
    return QuantizedModel(
        module=qmodel,
        int8_layers=[n for n in names if n in int8],
        float_layers=[n for n in names if n not in int8],
        ignored=list(scope.modules),
        notes=notes,
        config=cfg,
    )


@torch.no_grad()
def quantize_dynamic_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    *,
    backend: str = "xnnpack",
    per_channel: bool = True,
    ignore: IgnoreScope | ResolvedScope | Iterable[str] = (),
) -> QuantizedModel:
    """Dynamic int8 with a pt2e quantizer (``get_symmetric_quantization_config(is_dynamic=True)``
    for xnnpack): int8 weights, activation ranges computed per batch at run time, so there is
    no calibration - one forward of ``example`` instantiates the placeholders.

    XNNPACK's dynamic patterns cover ``nn.Linear`` (convolutions stay float, as in PyTorch's
    eager dynamic quantization). This is the dynamic variant of the edge path; it lowers to an
    XNNPACK ``.pte`` like the static one.
    """
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = copy.deepcopy(model).eval()
    scope = resolve_scope(model, ignore)
    if example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)
    with get_backend(backend).tracing(model):
        graph = export_model(model, example)
    quantizer = make_quantizer(
        backend=backend, per_channel=per_channel, is_dynamic=True, ignore=scope.modules
    )
    prepared = prepare_pt2e(graph, quantizer)
    prepared(example)
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    drop_unused_attributes(converted)
    int8, floats = split_int8(model, converted)
    config = {"quantizer": backend, "is_dynamic": True, "per_channel": per_channel}
    return QuantizedModel(
        module=converted,
        int8_layers=int8,
        float_layers=floats,
        ignored=list(scope.modules),
        notes=list(scope.notes),
        config=config,
        example=example,
    )
