"""Simulated low-bit post-training quantization: the ``LowBitPTQ`` recipe and its verb,
``quantize_lowbit`` (export -> annotate with ``LowBitQuantizer`` -> calibrate -> convert).

The result is a converted pt2e graph that *emulates* W``w``A``a``: codes are stored in int8 /
uint8 tensors and every quantized tensor goes through quantize -> dequantize (or a log2 /
twin-uniform fake-quant module) around fp32 kernels. It measures what the bit widths do to
accuracy; it is not an int8 kernel program, and below 8 bits nothing in PyTorch runs it faster.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vitquant.analysis.hooks import attention_modules, unfused_attention
from vitquant.data import DataBundle
from vitquant.evaluate import QUANTIZABLE
from vitquant.quant.configs import check_calibration
from vitquant.quant.lowbit.bits import BitSetting, BitsPlan, parse_bits_rule
from vitquant.quant.lowbit.quantizer import LowBitQuantizer, check_modes
from vitquant.quant.pt2e import (
    QuantizedModel,
    convert_prepared,
    export_model,
    open_calibration,
    resolve_scope,
    split_int8,
)
from vitquant.quant.scope import TYPE_PREFIX, IgnoreScope, ResolvedScope


@dataclass(frozen=True)
class LowBitPTQ:
    """Simulated low-bit static PTQ.

    Attributes:
        wbits: default weight bits (symmetric per channel, restricted range), 2..8.
        abits: default activation bits (asymmetric per tensor), 2..8.
        rules: per-layer overrides ``'GLOB=W/A'`` (``'blocks.0.*=8/8'``); the last match wins.
        quantize_attention: also quantize both inputs of the attention matmuls.
        quantize_layernorm: also quantize LayerNorm inputs (and outputs not already quantized).
        softmax: attention probabilities: ``uniform``, ``log2`` or ``log2-sqrt2`` (RepQ-ViT);
            the latter two need ``quantize_attention``.
        gelu: GELU outputs feeding a Linear: ``uniform`` or ``twin`` (PTQ4ViT twin uniform).
        observer: activation ranges: ``minmax`` or ``percentile``.
        percentile: upper percentile of the ``percentile`` observer.
        calib: calibration images from the ``calib`` role (None: all of it).
        calib_batch: calibration batch size.
    """

    wbits: int = 8
    abits: int = 8
    rules: tuple[str, ...] = ()
    quantize_attention: bool = False
    quantize_layernorm: bool = False
    softmax: str = "uniform"
    gelu: str = "uniform"
    observer: str = "minmax"
    percentile: float = 99.99
    calib: int | None = None
    calib_batch: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.rules, str):  # one rule given bare: a tuple of its characters is wrong
            object.__setattr__(self, "rules", (self.rules,))
        object.__setattr__(self, "rules", tuple(self.rules))
        self.plan  # noqa: B018 - validates the bit widths and every rule
        check_modes(
            softmax=self.softmax,
            gelu=self.gelu,
            observer=self.observer,
            quantize_attention=self.quantize_attention,
        )
        check_calibration(self)

    @property
    def plan(self) -> BitsPlan:
        """The ``BitsPlan``: ``W{wbits}A{abits}`` by default, then ``rules``."""
        return BitsPlan(BitSetting(self.wbits, self.abits), tuple(map(parse_bits_rule, self.rules)))

    def to_dict(self) -> dict:
        return {**asdict(self), "rules": list(self.rules), "label": bits_label(self)}


def bits_label(cfg: LowBitPTQ) -> str:
    """A short name of the recipe: ``W4A4``, ``W8A8-attn``, ``W4A4-attn-log2sqrt2-twin-ln``;
    ``-mixed`` when per-layer rules change some layers' bits."""
    parts = [f"W{cfg.wbits}A{cfg.abits}"]
    if cfg.quantize_attention:
        parts.append("attn")
    if cfg.softmax != "uniform":
        parts.append(cfg.softmax.replace("-", ""))
    if cfg.gelu != "uniform":
        parts.append(cfg.gelu)
    if cfg.quantize_layernorm:
        parts.append("ln")
    if cfg.rules:
        parts.append("mixed")
    return "-".join(parts)


def _ignored_names(model: nn.Module, scope: ResolvedScope) -> list[str]:
    """Module names to keep float: the resolved Linear/Conv layers, and every module an entry
    names or globs (so a container's LayerNorms and attention matmuls stay float too)."""
    names = [n for n, _ in model.named_modules() if n]
    out = list(scope.modules)
    for entry in scope.matches:
        if not entry.startswith(TYPE_PREFIX):
            out += [n for n in names if n == entry or fnmatch.fnmatchcase(n, entry)]
    return list(dict.fromkeys(out))


def _setting_notes(model: nn.Module, plan: BitsPlan, ignored: list[str]) -> list[str]:
    """One note per bit setting other than the default: which Linear/Conv layers have it."""
    by_setting: dict[BitSetting, list[str]] = {}
    for name, module in model.named_modules():
        if name and isinstance(module, QUANTIZABLE) and name not in ignored:
            setting = plan.for_module(name)
            if setting != plan.default:
                by_setting.setdefault(setting, []).append(name)
    return [f"{s} (rules): {', '.join(layers)}" for s, layers in by_setting.items()]


@torch.no_grad()
def quantize_lowbit(
    model: nn.Module,
    bundle: DataBundle,
    spec,
    cfg: LowBitPTQ = LowBitPTQ(),
    *,
    ignore: IgnoreScope | ResolvedScope | Iterable[str] = (),
    weight_scales: Mapping[str, torch.Tensor] | None = None,
    progress: str | None = None,
) -> QuantizedModel:
    """Simulated low-bit PTQ: export (explicit attention), annotate, calibrate, convert.

    Args:
        model: the float model (not modified).
        bundle: data; calibration uses its ``calib`` role (``cfg.calib`` images).
        spec: the model's ``ModelSpec``.
        cfg: the recipe.
        ignore: an ``IgnoreScope``, a ``ResolvedScope`` or a list of names/globs kept float.
        weight_scales: layer name -> per-channel scales of weights already rounded onto the
            ``cfg`` grid (e.g. by GPTQ); those layers keep exactly these scales.
        progress: a description to show a progress bar over calibration batches.

    Returns:
        A ``QuantizedModel``; its ``int8_layers`` are the layers with quantized weights (codes
        stored as int8 whatever ``wbits``), and its ``notes`` say that the graph is an emulation.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model = copy.deepcopy(model).eval()
    scope = resolve_scope(model, ignore)
    plan = cfg.plan
    plan.check(n for n, _ in model.named_modules())
    ignored = _ignored_names(model, scope)

    first, batches, example = open_calibration(bundle, spec, cfg, progress=progress)
    n_attention = len(attention_modules(model))
    with unfused_attention(model):  # explicit q @ k^T, softmax, attn @ v: each can be quantized
        graph = export_model(model, example)
    quantizer = LowBitQuantizer(
        plan=plan,
        quantize_attention=cfg.quantize_attention,
        quantize_layernorm=cfg.quantize_layernorm,
        softmax=cfg.softmax,
        gelu=cfg.gelu,
        ignore=ignored,
        weight_scales=weight_scales,
        observer=cfg.observer,
        percentile=cfg.percentile,
    )
    prepared = prepare_pt2e(graph, quantizer)
    for x, _ in itertools.chain([first], batches):
        prepared(x)
    batches.close()
    converted = convert_prepared(prepared)
    int8, floats = split_int8(model, converted)

    counts = ", ".join(f"{v} {k}" for k, v in sorted(quantizer.counts.items()))
    notes = [
        *scope.notes,
        f"simulated {bits_label(cfg)}: quantize/dequantize emulation around fp32 kernels "
        f"(codes stored as int8/uint8), not an int8 kernel program; quantized tensors: {counts}",
        *_setting_notes(model, plan, ignored),
        *quantizer.notes,
    ]
    if n_attention:
        notes.append(f"{n_attention} attention block(s) exported with the explicit softmax path")
    if cfg.quantize_attention and not quantizer.counts.get("log2") and cfg.softmax != "uniform":
        notes.append(f"softmax={cfg.softmax}: no softmax output feeds a quantized matmul")
    elif cfg.quantize_attention and not n_attention:
        notes.append("quantize_attention: the model has no timm attention blocks")
    return QuantizedModel(
        module=converted,
        int8_layers=int8,
        float_layers=floats,
        ignored=list(scope.modules),
        notes=notes,
        config=cfg,
        example=example,
    )
