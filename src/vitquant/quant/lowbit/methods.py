"""The ViT-aware methods by name, and ``apply_methods``: a float model + names -> a low-bit graph.

Three kinds of method, applied in this order to a copy of the float model:

1. **transforms** (``vitquant.quant.vitmethods``): float-invariant rewrites of the weights that
   flatten what the activation quantizer sees - ``smoothquant`` (SmoothQuant's migration of
   activation outliers into the weights), ``ln-reparam`` (RepQ-ViT's per-channel post-LayerNorm
   scales folded into the LayerNorm affine and the next Linear) and ``rotate`` (an offline
   Hadamard rotation of the residual stream, QuaRot/GLF-Q style). A later transform subsumes an
   earlier one where they touch the same LayerNorm (``rotate`` folds every LayerNorm away).
2. **quantizers** (``vitquant.quant.lowbit.quantizer``): ``log2-softmax`` (log-sqrt2 codes for
   the post-softmax attention map, RepQ-ViT) and ``twin-gelu`` (PTQ4ViT's twin-uniform
   quantizer for post-GELU activations).
3. **weights**: ``gptq`` rounds every quantized Linear's weights onto the W-bit grid with GPTQ on
   the calibration images; the quantizer then reuses those exact scales.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from torch import nn

from vitquant.errors import VitquantError


def _registry() -> dict:
    """Every method in application order: the transforms of ``vitquant.quant.vitmethods`` (one
    registry, theirs), then the quantizer and weight methods (``fn`` None: options of
    ``apply_methods``)."""
    from vitquant.quant.vitmethods import METHODS as TRANSFORMS
    from vitquant.quant.vitmethods import Method

    extra = (
        Method(
            "twin-gelu",
            "quantizer",
            "PTQ4ViT: twin-uniform quantizer for post-GELU activations (a fine step for the "
            "negative tail, a coarse one for the positive range)",
            None,
        ),
        Method(
            "log2-softmax",
            "quantizer",
            "RepQ-ViT: log-sqrt2 quantizer for the post-softmax attention map (power-law "
            "probabilities; only with --quantize-attention)",
            None,
        ),
        Method(
            "gptq",
            "weights",
            "GPTQ: W-bit weights rounded column by column on the calibration images, each "
            "rounding error compensated by the columns not yet rounded",
            None,
        ),
    )
    order = ("smoothquant", "ln-reparam", "rotate")
    return {**{n: TRANSFORMS[n] for n in order}, **{m.name: m for m in extra}}


METHODS = _registry()
ORDER = tuple(METHODS)  # the order they are applied in


def parse_methods(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``'rotate,gptq'`` (or a list) -> the method names in application order; ``all`` = every
    method. Unknown names are an error listing the known ones."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in items if n.strip()]
    if "all" in names:
        return ORDER
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise VitquantError(
            f"unknown ViT-aware method(s) {', '.join(unknown)}; choose from {', '.join(ORDER)} "
            "(comma separated) or all."
        )
    return tuple(n for n in ORDER if n in names)


def applicable(methods: Iterable[str], cfg, model: nn.Module) -> tuple[str, ...]:
    """The methods that change something for ``model`` at setting ``cfg``: the transforms need
    a DeiT-style ViT, ``twin-gelu`` a GELU, ``log2-softmax`` quantized attention."""
    return tuple(n for n in methods if why_not(n, cfg, model) is None)


def why_not(name: str, cfg, model: nn.Module) -> str | None:
    """Why method ``name`` does not apply to ``model`` at ``cfg`` (None: it applies)."""
    from vitquant.analysis.hooks import attention_modules, is_activation

    kind = METHODS[name].kind
    if kind == "transform":
        from vitquant.quant.vitmethods.layout import vit_layout

        try:
            vit_layout(model)
        except VitquantError as exc:
            return f"{name} rewrites DeiT-style ViTs only ({exc})"
    if name == "twin-gelu" and not any(is_activation(m) for m in model.modules()):
        return "twin-gelu quantizes GELU outputs and the model has no GELU"
    if name == "log2-softmax":
        if not attention_modules(model):
            return "log2-softmax quantizes attention maps and the model has no timm attention"
        if not cfg.quantize_attention:
            return "log2-softmax needs --quantize-attention (the softmax output stays float)"
    return None


@dataclass
class Applied:
    """What ``apply_methods`` made: the quantized model and each method's cost and report."""

    qm: object  # vitquant.quant.pt2e.QuantizedModel
    methods: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)


def calibration_batches(bundle, spec, cfg) -> list:
    """The calibration images as a list of ``(images, labels)`` batches (re-iterable)."""
    return list(bundle.batches("calib", spec, batch_size=cfg.calib_batch, limit=cfg.calib))


def apply_methods(
    model: nn.Module,
    bundle,
    spec,
    cfg,
    methods: Sequence[str] = (),
    *,
    ignore: Sequence[str] = (),
    calib: list | None = None,
    progress: str | None = None,
) -> Applied:
    """Quantize a copy of ``model`` at setting ``cfg`` (a ``LowBitPTQ``) with ``methods`` on.

    Args:
        model: the float model (not modified).
        bundle, spec: the data (calibration uses the ``calib`` role) and the model's spec.
        cfg: the low-bit setting (bits, attention, LayerNorm).
        methods: names from ``METHODS`` (any order; applied in ``ORDER``).
        ignore: module names kept in float.
        calib: the calibration batches when already loaded (``calibration_batches``).
        progress: a description to show a progress bar over the calibration batches.
    """
    from vitquant.quant.lowbit.ptq import quantize_lowbit

    names = parse_methods(list(methods))
    batches = calib if calib is not None else calibration_batches(bundle, spec, cfg)
    work = copy.deepcopy(model).eval()
    seconds: dict[str, float] = {}
    reports: dict[str, dict] = {}
    for name in names:
        if METHODS[name].kind == "transform":
            t0 = time.perf_counter()
            reports[name] = METHODS[name].fn(work, batches) or {}
            seconds[name] = time.perf_counter() - t0
    options = {}
    if "log2-softmax" in names:
        options["softmax"] = "log2-sqrt2"
    if "twin-gelu" in names:
        options["gelu"] = "twin"
    setting = replace(cfg, **options)
    weight_scales = None
    if "gptq" in names:
        from vitquant.quant.vitmethods.gptq import gptq

        plan = setting.plan
        t0 = time.perf_counter()
        weight_scales = gptq(
            work, batches, wbits=lambda n: plan.for_module(n).wbits, ignore=tuple(ignore)
        )
        seconds["gptq"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    qm = quantize_lowbit(
        work, bundle, spec, setting, ignore=list(ignore), weight_scales=weight_scales,
        progress=progress,
    )  # fmt: skip
    seconds["quantize"] = time.perf_counter() - t0
    qm.notes.extend(f"{n}: {METHODS[n].description}" for n in names)
    return Applied(qm=qm, methods=names, seconds=seconds, reports=reports)
