"""Draw quantize results (render only; numbers come from ``vitquant.quant``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_top_k(
    sweep: list[dict], path: Path, *, fp32: dict[str, float] | None = None, title: str = ""
) -> Path:
    """Accuracy against k, the number of most-outlier layers kept in float.

    Args:
        sweep: rows of ``vitquant.quant.auto.sweep_top_k`` (``k``, ``<role>_acc``).
        path: the PNG to write.
        fp32: role -> float accuracy, drawn as dashed reference lines.
        title: plot title.
    """
    ks = [r["k"] for r in sweep]
    roles = [key.removesuffix("_acc") for key in sweep[0] if key.endswith("_acc")]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, role in enumerate(roles):
        color = f"C{i}"
        ax.plot(
            ks,
            [r[f"{role}_acc"] * 100 for r in sweep],
            marker="o",
            color=color,
            label=f"static int8 ({role})",
        )
        if fp32 and role in fp32:
            ax.axhline(fp32[role] * 100, ls="--", color=color, alpha=0.6, label=f"fp32 ({role})")
    ax.set(
        xlabel="k (layers with the most activation outliers kept in float)",
        ylabel="top-1 accuracy (%)",
        title=title or "Accuracy vs layers kept in float",
    )
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_auto_steps(steps: list[dict], path: Path, *, max_drop: float, title: str = "") -> Path:
    """Val drop (points) after each step of the accuracy-aware selection."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = [s["step"] for s in steps]
    ax.plot(xs, [s["drop_pts"] for s in steps], marker="o")
    ax.axhline(max_drop, ls="--", color="C3", label=f"budget {max_drop} pts")
    labels = ["all int8"] + [s["added"] for s in steps[1:]]
    ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="val accuracy drop (pts)", title=title or "Accuracy-aware layer selection")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
