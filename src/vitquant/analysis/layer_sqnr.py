"""Per-layer W8A8 output SQNR in one pass: a cheap ranking of which layers int8 hurts most.

The full sensitivity analysis (``sensitivity.per_layer_sensitivity``) measures what quantizing
each layer does to the model's *output*: two evaluations of the val images per layer. For DeiT-S
at 224 px (48 layers, 500 val images, ~0.1 s per image on two cores) that is over an hour.

This ranking looks at each layer's *own* output instead, for every layer in the same forward pass
of the float model: a forward hook recomputes the layer with its input fake-quantized (uint8
per-tensor, the range observed on ``calib``) and its weight fake-quantized (int8 per-channel,
symmetric) - the same simulation as the sensitivity analysis - and accumulates

    SQNR_l = 10 log10( sum y_l^2 / sum (y_l - yq_l)^2 )   (dB; higher is better)

over the images, where ``y_l`` is the float output. Cost: one calibration pass and one pass of
about twice a float forward. It is a local proxy (it ignores how an error propagates to the
logits), so it orders candidates for the accuracy-aware search, whose every step is measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.analysis.sensitivity import QParams, calibrate, layer_names
from vitquant.errors import VitquantError


@dataclass(frozen=True)
class LayerSQNR:
    """One layer's output SQNR under W8A8 (dB) over ``n_images``."""

    name: str
    sqnr_db: float
    n_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def _quantized_output(module: nn.Module, x: torch.Tensor, qp: QParams) -> torch.Tensor:
    xq = torch.fake_quantize_per_tensor_affine(x, qp.input_scale, qp.input_zero_point, 0, 255)
    if isinstance(module, nn.Linear):
        return F.linear(xq, qp.weight_q, module.bias)
    return module._conv_forward(xq, qp.weight_q, module.bias)  # Conv1d/2d/3d


@torch.no_grad()
def layer_sqnr(
    model: nn.Module,
    bundle,
    spec,
    *,
    role: str = "val",
    limit: int | None = None,
    calib_limit: int | None = None,
    batch_size: int = 64,
) -> list[LayerSQNR]:
    """Output SQNR of every Linear/Conv under W8A8, lowest (most hurt) first.

    Args:
        model: the float model (left unchanged).
        bundle, spec: the data and the model's spec.
        role: images the SQNR is measured on (``val``; never ``test``).
        limit: only the first ``limit`` images of ``role`` (a stratified prefix).
        calib_limit: calibration images for the input ranges (default: all of ``calib``).
        batch_size: images per forward pass.
    """
    if role == "test":
        raise VitquantError("the layer ranking drives choices, so it runs on val, never on test.")
    model.eval()
    qparams = calibrate(model, bundle, spec, limit=calib_limit)
    modules = dict(model.named_modules())
    signal = {n: torch.zeros((), dtype=torch.float64) for n in qparams}
    noise = {n: torch.zeros((), dtype=torch.float64) for n in qparams}

    def hook(name: str):
        def fn(module, args, out):
            err = out - _quantized_output(module, args[0], qparams[name])
            signal[name] += out.double().pow(2).sum()
            noise[name] += err.double().pow(2).sum()

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in layer_names(model)]
    seen = 0
    try:
        for x, _ in bundle.batches(role, spec, batch_size=batch_size, limit=limit):
            model(x)
            seen += len(x)
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise VitquantError(f"no {role} images for the layer ranking; pass --val N with N > 0.")
    rows = []
    for n in qparams:
        s, e = signal[n].item(), noise[n].item()
        db = math.inf if e == 0 else (-math.inf if s == 0 else 10 * math.log10(s / e))
        rows.append(LayerSQNR(n, db, seen))
    return sorted(rows, key=lambda r: r.sqnr_db)
