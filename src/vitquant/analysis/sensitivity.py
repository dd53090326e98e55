"""Per-layer sensitivity: what int8 (W8A8) does to the output when one layer is quantized alone,
and when every layer but that one is.

Simulation (fake quantization in float32, the numerics of the x86 pt2e recipe without exporting):

- weights: int8 per-channel symmetric (axis 0), qparams from
  ``torch.ao.quantization.observer.PerChannelMinMaxObserver`` (``qint8``, range -128..127, so the
  scale is ``max|w_c| / 127.5``), applied with ``torch.fake_quantize_per_channel_affine``;
- input activations: uint8 per-tensor affine (0..255) from a ``MinMaxObserver`` run on the float
  model over the calibration images (as PTQ calibrates), applied with
  ``torch.fake_quantize_per_tensor_affine`` in a forward pre-hook.

MinMax rather than the histogram observer keeps one calibration pass cheap and makes ranges
reproducible; the ranking, not the absolute accuracy, is what this analysis is for. Every choice
uses the ``val`` role (never ``test``). Ranked most sensitive first by ``only_kl``: the KL
divergence from the float model's predictions when only that layer is quantized.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from vitquant.analysis.hooks import block_names, head_name, layer_kind
from vitquant.distributed import DistContext, all_reduce_
from vitquant.errors import VitquantError
from vitquant.evaluate import QUANTIZABLE
from vitquant.progress import track


@dataclass(frozen=True)
class QParams:
    """Fake-quantized weight and input (scale, zero point) of one layer."""

    weight_q: torch.Tensor
    input_scale: float
    input_zero_point: int


@dataclass
class LayerSensitivity:
    """How much int8 in one layer matters (accuracies 0-1 on ``val``; KL in nats per image).

    Attributes:
        name: the module name.
        only_*: only this layer quantized (W8A8), against the float model.
        all_but_*: every quantizable layer except this one quantized.
        only_drop_pts: ``(float_acc - only_acc) * 100``.
        all_but_gain_pts: ``(all_but_acc - all_acc) * 100``: accuracy won back by keeping it float.
        all_acc, all_kl: every layer quantized (the same for every row).
        rank: 1 = most sensitive (largest ``only_kl``).
    """

    name: str
    kind: str
    block: int | None
    float_acc: float
    only_acc: float
    only_kl: float
    only_agreement: float
    all_but_acc: float
    all_but_kl: float
    all_but_agreement: float
    all_acc: float
    all_kl: float
    only_drop_pts: float = 0.0
    all_but_gain_pts: float = 0.0
    rank: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and isinstance(m, QUANTIZABLE)]


@torch.no_grad()
def calibrate(
    model: nn.Module,
    bundle,
    spec,
    *,
    role: str = "calib",
    limit: int | None = None,
    batch_size: int = 128,
    ctx: DistContext | None = None,
) -> dict[str, QParams]:
    """W8A8 qparams of every quantizable layer (input ranges observed on the float model).

    With a distributed ``ctx`` each rank observes its shard and the ranges are merged (MIN/MAX),
    so every rank gets the qparams one process would.
    """
    modules = {n: m for n, m in model.named_modules() if n and isinstance(m, QUANTIZABLE)}
    observers = {
        n: MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine) for n in modules
    }
    handles = [
        m.register_forward_pre_hook(lambda _m, args, _n=n: observers[_n](args[0].detach()))
        for n, m in modules.items()
    ]
    try:
        model.eval()
        seen = 0
        shard = ctx.shard if ctx is not None else None
        for x, _ in bundle.batches(role, spec, batch_size=batch_size, limit=limit, shard=shard):
            model(x)
            seen += len(x)
    finally:
        for h in handles:
            h.remove()
    if ctx is not None and ctx.world > 1:
        obs = list(observers.values())
        lows = all_reduce_(torch.stack([o.min_val.reshape(()) for o in obs]), ctx, "min")
        highs = all_reduce_(torch.stack([o.max_val.reshape(()) for o in obs]), ctx, "max")
        for o, lo, hi in zip(obs, lows, highs, strict=True):
            o.min_val.copy_(lo)
            o.max_val.copy_(hi)
        seen = int(all_reduce_(torch.tensor([seen]), ctx, "sum"))
    if seen == 0:
        raise VitquantError(f"no {role} images to calibrate on; pass --calib N with N > 0.")
    out = {}
    for name, module in modules.items():
        scale, zp = observers[name].calculate_qparams()
        w_obs = PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        )
        w = module.weight.detach()
        w_obs(w)
        w_scale, w_zp = w_obs.calculate_qparams()
        wq = torch.fake_quantize_per_channel_affine(
            w, w_scale.float(), w_zp.to(torch.int32), 0, w_obs.quant_min, w_obs.quant_max
        )
        out[name] = QParams(wq, float(scale), int(zp))
    return out


@contextmanager
def simulate_w8a8(model: nn.Module, qparams: dict[str, QParams], names) -> Iterator[None]:
    """Within the block, the layers ``names`` run with fake-quantized weights and inputs."""
    modules = dict(model.named_modules())
    saved, handles = {}, []
    try:
        for name in names:
            module, qp = modules[name], qparams[name]
            saved[name] = module.weight.data
            module.weight.data = qp.weight_q

            def pre(_m, args, _qp=qp):
                x = torch.fake_quantize_per_tensor_affine(
                    args[0], _qp.input_scale, _qp.input_zero_point, 0, 255
                )
                return (x, *args[1:])

            handles.append(module.register_forward_pre_hook(pre))
        yield
    finally:
        for h in handles:
            h.remove()
        for name, data in saved.items():
            modules[name].weight.data = data


@torch.no_grad()
def _logits(model, bundle, spec, role, limit, batch_size, shard=None) -> torch.Tensor:
    out = [
        model(x).float()
        for x, _ in bundle.batches(role, spec, batch_size=batch_size, limit=limit, shard=shard)
    ]
    return torch.cat(out) if out else torch.empty(0, 0)  # (N, classes); a rank may get none


def tallies(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Float64 ``[correct, summed KL(ref || this), top-1 agreements with ref]`` over the images.

    Sums, so that ranks holding shards of the images add theirs up (``all_reduce``).
    """
    if len(labels) == 0:
        return torch.zeros(3, dtype=torch.float64)
    kl = F.kl_div(
        F.log_softmax(logits, 1), F.log_softmax(ref_logits, 1), log_target=True, reduction="none"
    )  # (N, classes) float32
    pred = logits.argmax(1)
    return torch.stack(
        [
            (pred == labels).sum().double(),
            kl.double().sum(),
            (pred == ref_logits.argmax(1)).sum().double(),
        ]
    )


def figures(sums: torch.Tensor, n: int) -> tuple[float, float, float]:
    """``(accuracy, KL per image, agreement)`` from ``tallies`` over ``n`` images.

    The ratios of counts are rounded to float32, as ``(pred == labels).float().mean()`` is.
    """
    correct, kl, agree = sums.tolist()
    return _ratio32(correct, n), max(kl / n, 0.0), _ratio32(agree, n)


def _ratio32(count: float, n: int) -> float:
    return (torch.tensor(count, dtype=torch.float32) / n).item()


def compare(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
    """``(accuracy, KL(ref || this) per image, top-1 agreement with ref)``."""
    return figures(tallies(ref_logits, logits, labels), len(labels))


def per_layer_sensitivity(
    model: nn.Module,
    bundle,
    spec,
    *,
    role: str = "val",
    limit: int | None = None,
    layers: list[str] | None = None,
    calib_limit: int | None = None,
    batch_size: int = 128,
    progress: bool = True,
    ctx: DistContext | None = None,
) -> list[LayerSensitivity]:
    """Accuracy, KL and top-1 agreement with only / all but each layer quantized; ranked.

    Costs ``2 * len(layers) + 2`` evaluations of ``role``.

    Args:
        model: the float model (left unchanged).
        bundle, spec: data bundle and the model's spec.
        role: where accuracies are measured; ``val`` (choices never look at ``test``).
        limit: only the first ``limit`` images of ``role``.
        layers: the layers to test (default: every Linear/Conv); the "all but" variants still
            quantize every other quantizable layer.
        calib_limit: calibration images for the activation ranges (default: all of ``calib``).
        batch_size: evaluation batch size.
        progress: progress bar over layers (on rank 0).
        ctx: this process's place in a ``torchrun`` job (None: a single process). Each rank
            evaluates its shard of the images and the tallies are summed, so every rank gets
            the rows of all the images.

    Returns:
        One ``LayerSensitivity`` per layer, most sensitive (largest ``only_kl``) first.
    """
    if role == "test":
        raise VitquantError("sensitivity drives choices, so it runs on val, never on test.")
    model.eval()
    everything = layer_names(model)
    chosen = list(everything if layers is None else layers)
    unknown = [n for n in chosen if n not in everything]
    if unknown:
        raise VitquantError(
            f"not quantizable layers of this model: {', '.join(unknown[:5])}. "
            f"Known: {', '.join(everything[:8])}..."
        )
    labels = bundle.labels(role, limit=limit)
    n = len(labels)
    if n == 0:
        raise VitquantError(f"no {role} images; pass --val N with N > 0.")
    shard = ctx.shard if ctx is not None else None
    if shard is not None:
        labels = labels[shard[0] :: shard[1]]  # the order of batches(..., shard=shard)
        progress = progress and ctx.is_main
    qparams = calibrate(model, bundle, spec, limit=calib_limit, batch_size=batch_size, ctx=ctx)

    def logits(names=()) -> torch.Tensor:
        with simulate_w8a8(model, qparams, names):
            return _logits(model, bundle, spec, role, limit, batch_size, shard)

    def measure(out: torch.Tensor) -> tuple[float, float, float]:
        return figures(all_reduce_(tallies(ref, out, labels), ctx, "sum"), n)

    ref = logits()
    float_acc = measure(ref)[0]
    all_acc, all_kl, _ = measure(logits(everything))
    head = head_name(model)
    modules = dict(model.named_modules())
    blocks = block_names(everything)
    rows = []
    items = track(chosen, total=len(chosen), description="sensitivity") if progress else chosen
    for name in items:
        only = measure(logits([name]))
        all_but = measure(logits([other for other in everything if other != name]))
        kind = layer_kind(name, modules[name], head=head)
        rows.append(
            LayerSensitivity(
                name=name,
                kind=kind,
                block=None if kind == "head" else blocks[name][0],
                float_acc=float_acc,
                only_acc=only[0],
                only_kl=only[1],
                only_agreement=only[2],
                all_but_acc=all_but[0],
                all_but_kl=all_but[1],
                all_but_agreement=all_but[2],
                all_acc=all_acc,
                all_kl=all_kl,
                only_drop_pts=(float_acc - only[0]) * 100,
                all_but_gain_pts=(all_but[0] - all_acc) * 100,
            )
        )
    rows.sort(key=lambda r: (-r.only_kl, r.all_but_kl))
    for i, r in enumerate(rows, start=1):
        r.rank = i
    return rows
