"""Draw the ViT-vs-CNN comparison (render only; numbers come from ``vitquant.compare``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_compare_depth(profiles, path: Path) -> Path:
    """Outlier % and activation range by relative depth, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for p in profiles:
        depth = [(d["depth_from"] + d["depth_to"]) / 2 for d in p.depth]
        style = "-" if p.family == "vit" else "--"
        axes[0].plot(depth, [d["outlier_pct"] for d in p.depth], style, marker="o", label=p.model)
        axes[1].plot(depth, [d["range"] for d in p.depth], style, marker="o", label=p.model)
    axes[0].set(
        xlabel="relative depth", ylabel="outlier % (IQR rule)", title="Activation outliers by depth"
    )
    axes[1].set(
        xlabel="relative depth",
        ylabel="max - min",
        yscale="log",
        title="Activation dynamic range by depth",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_compare_drops(profiles, path: Path) -> Path:
    """Accuracy drop per method, grouped by model."""
    methods = list(profiles[0].drops)
    x = np.arange(len(methods))
    width = 0.8 / len(profiles)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, p in enumerate(profiles):
        values = [p.drops[m] for m in methods]
        bars = ax.bar(x + i * width, values, width, label=f"{p.model} ({p.family})")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x + width * (len(profiles) - 1) / 2, methods)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="accuracy drop (points)", title="int8 accuracy drop vs fp32, same data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_compare_channels(profiles, path: Path) -> Path:
    """Inter-channel variation of activations and weights (max/median channel |max|)."""
    names = [p.model for p in profiles]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.2, [p.act_channel_ratio_median for p in profiles], 0.4, label="activations")
    ax.bar(x + 0.2, [p.weight_channel_ratio_median for p in profiles], 0.4, label="weights")
    ax.set_xticks(x, names)
    top = max(max(p.act_channel_ratio_median, p.weight_channel_ratio_median) for p in profiles)
    ax.set(
        ylabel="median of max/median channel |max|",
        yscale="log" if top > 20 else "linear",
        title="Inter-channel variation (why per-tensor scales hurt)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
