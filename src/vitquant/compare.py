"""ViT vs CNN, measured: the same data, calibration and recipes on several models side by side.

For each model: activation outliers and dynamic range by relative depth, inter-channel variation
of activations and weights, and the accuracy drop under static per-tensor, static per-channel and
dynamic int8. ``summarize`` turns the numbers into a few plain sentences; nothing is asserted that
the numbers do not show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from vitquant.data import DataBundle, check_compatible
from vitquant.evaluate import accuracy
from vitquant.registry import load_model

DEPTH_BINS = 5


@dataclass
class ModelProfile:
    """One model's quantization profile (accuracies 0-1, drops in points)."""

    model: str
    family: str
    fp32_acc: float
    drops: dict[str, float]  # method -> drop in points (static-per-tensor, ...)
    accuracies: dict[str, float]
    mean_outlier_pct: float
    significant_share: float  # share of observed points above the threshold
    act_range_p99: float  # 99th percentile over points of (max - min)
    act_channel_ratio_median: float  # median over points of max/median channel |max|
    weight_channel_ratio_median: float  # median over layers of max/median per-channel |w| max
    weight_channel_ratio_max: float
    depth: list[dict] = field(default_factory=list)  # per depth bin: outlier %, range
    n_points: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def weight_channel_ratios(model: torch.nn.Module) -> list[float]:
    """Per Linear/Conv: max over output channels of |w| max, divided by their median."""
    from vitquant.evaluate import QUANTIZABLE

    out = []
    for m in model.modules():
        if isinstance(m, QUANTIZABLE):
            w = m.weight.detach().flatten(1).abs().amax(1)  # (out_channels,)
            med = float(w.median())
            if med > 0:
                out.append(float(w.max()) / med)
    return out


def depth_profile(stats, bins: int = DEPTH_BINS) -> list[dict]:
    """Outlier % and activation range averaged over ``bins`` equal slices of relative depth."""
    n = len(stats)
    rows = []
    for b in range(bins):
        members = [s for i, s in enumerate(stats) if min(int(i * bins / max(n, 1)), bins - 1) == b]
        if not members:
            continue
        rows.append(
            {
                "bin": b,
                "depth_from": b / bins,
                "depth_to": (b + 1) / bins,
                "outlier_pct": float(np.mean([s.outlier_pct for s in members])),
                "range": float(np.mean([s.max - s.min for s in members])),
                "channel_ratio": float(np.median([s.channel_absmax_ratio for s in members])),
            }
        )
    return rows


def profile_model(
    name: str,
    bundle: DataBundle,
    *,
    role: str = "test",
    calib: int | None = None,
    stats_limit: int | None = 256,
    threshold: float = 5.0,
    log: Callable[[str], None] = print,
) -> ModelProfile:
    """Measure one model: activation statistics (calib role), float and int8 accuracy (``role``)."""
    loaded = load_model(name)
    check_compatible(bundle, loaded.spec)
    return profile_loaded(
        name,
        loaded.model,
        loaded.spec,
        bundle,
        role=role,
        calib=calib,
        stats_limit=stats_limit,
        threshold=threshold,
        log=log,
    )


def profile_loaded(
    name: str,
    model: torch.nn.Module,
    spec,
    bundle: DataBundle,
    *,
    role: str = "test",
    calib: int | None = None,
    stats_limit: int | None = 256,
    threshold: float = 5.0,
    log: Callable[[str], None] = print,
) -> ModelProfile:
    """``profile_model`` of a model already built (any module with its ``ModelSpec``)."""
    from vitquant.analysis.stats import collect_activation_stats
    from vitquant.quant.configs import DynamicPTQ, StaticPTQ
    from vitquant.quant.dynamic import quantize_dynamic
    from vitquant.quant.pt2e import quantize_static

    log(f"{name}: activation statistics")
    stats = collect_activation_stats(
        model, bundle, spec, role="calib", limit=stats_limit, threshold=threshold, progress=False
    )
    fp32 = accuracy(model, bundle, role, spec)
    accs = {}
    for method, make in (
        (
            "static-per-tensor",
            lambda: quantize_static(model, bundle, spec, StaticPTQ(per_channel=False, calib=calib)),
        ),
        (
            "static-per-channel",
            lambda: quantize_static(model, bundle, spec, StaticPTQ(per_channel=True, calib=calib)),
        ),
        ("dynamic", lambda: quantize_dynamic(model, DynamicPTQ())),
    ):
        log(f"{name}: {method}")
        accs[method] = accuracy(make(), bundle, role, spec)
    ratios = weight_channel_ratios(model)
    return ModelProfile(
        model=name,
        family=spec.family,
        fp32_acc=fp32,
        drops={k: (fp32 - v) * 100 for k, v in accs.items()},
        accuracies=accs,
        mean_outlier_pct=float(np.mean([s.outlier_pct for s in stats])),
        significant_share=float(np.mean([s.significant for s in stats])),
        act_range_p99=float(np.percentile([s.max - s.min for s in stats], 99)),
        act_channel_ratio_median=float(np.median([s.channel_absmax_ratio for s in stats])),
        weight_channel_ratio_median=float(np.median(ratios)) if ratios else float("nan"),
        weight_channel_ratio_max=float(np.max(ratios)) if ratios else float("nan"),
        depth=depth_profile(stats),
        n_points=len(stats),
    )


def summarize(profiles: list[ModelProfile]) -> list[str]:
    """Plain sentences that state what the measured numbers show (and only that)."""
    lines = []
    vits = [p for p in profiles if p.family == "vit"]
    cnns = [p for p in profiles if p.family == "cnn"]
    for p in profiles:
        worst = max(p.drops, key=p.drops.get)
        lines.append(
            f"{p.model} ({p.family}): fp32 {p.fp32_acc:.4f}; drops "
            + ", ".join(f"{k} {v:+.2f} pts" for k, v in p.drops.items())
            + f" (worst: {worst}); {p.mean_outlier_pct:.2f}% outliers on average, "
            f"{100 * p.significant_share:.0f}% of points significant; activation channel "
            f"max/median ratio {p.act_channel_ratio_median:.1f}."
        )
    if vits and cnns:
        for metric, label in (
            ("mean_outlier_pct", "mean outlier %"),
            ("act_channel_ratio_median", "inter-channel activation variation"),
            ("act_range_p99", "activation dynamic range (p99 of max-min)"),
        ):
            v = np.mean([getattr(p, metric) for p in vits])
            c = np.mean([getattr(p, metric) for p in cnns])
            rel = "higher" if v > c else "lower"
            lines.append(f"ViTs have {rel} {label} than CNNs here: {v:.3g} vs {c:.3g}.")
        for method in vits[0].drops:
            v = np.mean([p.drops[method] for p in vits])
            c = np.mean([p.drops[method] for p in cnns])
            lines.append(
                f"{method}: ViT drop {v:+.2f} pts vs CNN drop {c:+.2f} pts"
                + (" - the ViT loses more." if v > c else " - the ViT loses no more.")
            )
    return lines
