"""Where a low-bit setting loses accuracy: the quantization error of each activation point.

For one setting (bits per layer, quantized attention, the softmax/GELU quantizers of the ViT-aware
methods) this measures, at every observation point the setting quantizes
(``vitquant.analysis.hooks``):

- ``sqnr_db``: the *local* signal-to-quantization-noise ratio of the point on val,
  ``10 log10(sum x^2 / sum (x - Q(x))^2)``, where ``Q`` is the point's quantizer with the range
  calibrated on ``calib`` (the same numerics as the pt2e graph: ``vitquant.quant.lowbit.numerics``).
  Every point is quantized in isolation, so one point's error does not blur another's;
- ``impact_pts``: the top-1 accuracy lost on a val subset when *only* that point is quantized
  (a forward hook replaces the point's output by ``Q(output)``) - one forward pass per point.

``rank_correlations`` then answers the study's question with data: do the points with the most
IQR outliers (``outlier_pct`` from ``vitquant.analysis.stats``) have the largest error or cost
the most accuracy? Spearman's rho from SciPy.

Which points a setting quantizes: LayerNorm outputs (the inputs of ``qkv``/``fc1``/``head``) and
GELU outputs (``fc2``'s input) always; with quantized attention also the ``qkv`` output (q, k and
v feed the attention matmuls) and the softmax probabilities; in CNNs every Linear/Conv output
(the next layer's input). A point whose reading module is ignored is left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vitquant.analysis.hooks import Point, observe
from vitquant.errors import VitquantError

SAMPLE = 1 << 18  # values kept per point to fit a twin-uniform quantizer


@dataclass(frozen=True)
class PointSetting:
    """What the analysed low-bit setting does at the activation points.

    Attributes:
        abits: activation bits of a point given the module that reads it (``Point.module``).
        quantize_attention: q, k, v and the softmax probabilities are quantized.
        softmax: ``uniform``, ``log2`` or ``log2-sqrt2`` quantizer of the probabilities.
        gelu: ``uniform`` or ``twin`` (twin-uniform) quantizer of GELU outputs.
        ignore: module names kept in float (their input points are not quantized).
    """

    abits: Callable[[str], int]
    quantize_attention: bool = False
    softmax: str = "uniform"
    gelu: str = "uniform"
    ignore: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PointError:
    """One quantized point of a setting (see the module docstring)."""

    point: str
    module: str
    kind: str
    quantizer: str
    bits: int
    sqnr_db: float
    impact_pts: float | None
    outlier_pct: float | None = None
    channel_ratio: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def quantized_points(points: Sequence[Point], setting: PointSetting) -> list[Point]:
    """The points ``setting`` quantizes, in forward order (see the module docstring)."""
    kinds = {"norm", "act", "conv", "conv_dw", "conv_pw", "linear"}
    if setting.quantize_attention:
        kinds |= {"softmax", "qkv"}
    out = []
    for p in points:
        if p.kind not in kinds or p.module in setting.ignore:
            continue
        if p.kind == "linear" and p.module == p.point and p.point.endswith("head"):
            continue  # the logits are not quantized
        out.append(p)
    return out


class _Quantizer:
    """A point's calibrated quantizer: range (or twin-uniform steps) from calib, then ``q(x)``."""

    def __init__(self, point: Point, setting: PointSetting) -> None:
        self.bits = int(setting.abits(point.module))
        self.kind = "uniform"
        if point.kind == "softmax" and setting.softmax != "uniform":
            self.kind = setting.softmax
        elif point.kind == "act" and setting.gelu == "twin":
            self.kind = "twin"
        self.lo, self.hi = math.inf, -math.inf
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.params: tuple | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.bits}"

    def observe(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        if self.kind == "twin" and self.kept < SAMPLE:
            flat = x.detach().flatten().float()
            take = flat[torch.randperm(flat.numel())[: SAMPLE - self.kept]]
            self.samples.append(take)
            self.kept += take.numel()

    def freeze(self) -> None:
        from vitquant.quant.lowbit import numerics

        if self.kind == "twin":
            sample = torch.cat(self.samples) if self.samples else torch.zeros(1)
            self.params = tuple(numerics.twin_uniform_params(sample, self.bits))
        elif self.kind == "uniform":
            self.params = numerics.affine_qparams(
                torch.tensor(self.lo), torch.tensor(self.hi), self.bits, symmetric=False
            )
        self.samples = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from vitquant.quant.lowbit import numerics

        if self.kind == "twin":
            return numerics.twin_uniform_quant(x, self.bits, *self.params)
        if self.kind.startswith("log2"):
            base = "sqrt2" if self.kind == "log2-sqrt2" else "2"
            return numerics.log2_quant(x, self.bits, base=base)
        scale, zero_point, qmin, qmax = self.params
        return numerics.fake_quant_affine(x, scale, zero_point, qmin, qmax)


@torch.no_grad()
def point_errors(
    model: nn.Module,
    points: Sequence[Point],
    setting: PointSetting,
    *,
    calib: Callable[[], Iterable[torch.Tensor]],
    val: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    impact: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    stats: dict | None = None,
    progress: Callable[[Iterable, str], Iterable] | None = None,
) -> list[PointError]:
    """Local SQNR (and optionally the accuracy impact) of every point ``setting`` quantizes.

    Args:
        model: the float model (eval mode; not modified).
        points: its observation points (``observation_points``).
        setting: the low-bit setting.
        calib: returns the calibration images (ranges and twin-uniform steps are fitted there).
        val: returns ``(images, labels)`` batches the SQNR is measured on.
        impact: returns the ``(images, labels)`` batches of the per-point accuracy impact
            (None: not measured; it costs one forward pass over them per point).
        stats: point name -> ``PointStats`` of the same model, to put ``outlier_pct`` and the
            channel abs-max ratio beside each error.
        progress: wraps an iterable with a progress bar (``progress(iterable, description)``).
    """
    model.eval()
    chosen = quantized_points(points, setting)
    if not chosen:
        raise VitquantError("this setting quantizes none of the model's observation points.")
    wrap = progress or (lambda it, _desc: it)
    quant = {p.point: _Quantizer(p, setting) for p in chosen}

    with observe(model, chosen, lambda p, out: quant[p.point].observe(out)):
        for x in wrap(calib(), "point ranges (calib)"):
            model(x)
    for q in quant.values():
        q.freeze()

    signal = dict.fromkeys(quant, 0.0)
    noise = dict.fromkeys(quant, 0.0)

    def accumulate(p: Point, out: torch.Tensor) -> None:
        x = out.float()
        signal[p.point] += float((x * x).sum())
        noise[p.point] += float(((x - quant[p.point](x)) ** 2).sum())

    with observe(model, chosen, accumulate):
        for x, _ in wrap(val(), "point SQNR (val)"):
            model(x)

    impacts = _impacts(model, chosen, quant, impact, wrap) if impact is not None else {}
    out = []
    for p in chosen:
        s = (stats or {}).get(p.point)
        out.append(
            PointError(
                point=p.point,
                module=p.module,
                kind=p.kind,
                quantizer=quant[p.point].label,
                bits=quant[p.point].bits,
                sqnr_db=_db(signal[p.point], noise[p.point]),
                impact_pts=impacts.get(p.point),
                outlier_pct=None if s is None else float(s.outlier_pct),
                channel_ratio=None if s is None else float(s.channel_absmax_ratio),
            )
        )
    return out


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _impacts(model, chosen, quant, batches, wrap) -> dict[str, float]:
    """Accuracy points lost when only one point is quantized, for every point."""
    data = list(batches())
    labels = torch.cat([y for _, y in data])

    def accuracy() -> float:
        preds = torch.cat([model(x).argmax(-1) for x, _ in data])
        return float((preds == labels).float().mean())

    with observe(model, [], lambda *_: None):  # the same explicit attention path as the hooks
        base = accuracy()
    out = {}
    for p in wrap(chosen, "per-point accuracy impact"):
        handle = p.target.register_forward_hook(lambda _m, _i, o, q=quant[p.point]: q(o))
        try:
            with observe(model, [], lambda *_: None):
                out[p.point] = (base - accuracy()) * 100.0
        finally:
            handle.remove()
    return out


def rank_correlations(errors: Sequence[PointError]) -> dict:
    """Spearman's rho of ``outlier_pct`` against the error (``-sqnr_db``) and the impact.

    Positive rho: the points with more IQR outliers lose more. ``n`` points with both figures
    finite; rho is None below 3 points or when a column is constant.
    """
    from scipy.stats import spearmanr

    def corr(pairs: list[tuple[float, float]]) -> dict:
        n = len(pairs)
        if n < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
            return {"rho": None, "p_value": None, "n": n}
        res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
        return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": n}

    with_outliers = [e for e in errors if e.outlier_pct is not None]
    return {
        "outlier_pct_vs_error": corr(
            [(e.outlier_pct, -e.sqnr_db) for e in with_outliers if math.isfinite(e.sqnr_db)]
        ),
        "outlier_pct_vs_impact": corr(
            [(e.outlier_pct, e.impact_pts) for e in with_outliers if e.impact_pts is not None]
        ),
    }
