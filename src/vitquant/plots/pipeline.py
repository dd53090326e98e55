"""Draw the pipeline's actual run as a flow diagram with the measured numbers on its nodes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

_COLORS = {
    "ok": "#d1fadf",
    "miss": "#fee4e2",
    "info": "#eef2f6",
    "skip": "#f2f4f7",
    "final": "#b2ddff",
}


def plot_flow(nodes: list[dict], path: Path, *, title: str = "") -> Path:
    """Render ``nodes`` top to bottom; each has ``label``, ``detail`` and ``status``.

    ``status`` is ``ok`` (within budget), ``miss`` (over budget), ``info``, ``skip`` (not run)
    or ``final`` (the chosen variant); edges join consecutive nodes.
    """
    n = len(nodes)
    fig_h = 1.0 + 1.15 * n
    fig, ax = plt.subplots(figsize=(8.5, fig_h))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, n * 1.15 + 0.3)
    ax.axis("off")
    for i, node in enumerate(nodes):
        y = (n - i - 1) * 1.15 + 0.3
        box = FancyBboxPatch(
            (0.6, y),
            8.8,
            0.85,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=_COLORS.get(node.get("status", "info"), "#eef2f6"),
            edgecolor="#475467",
            linestyle="--" if node.get("status") == "skip" else "-",
        )
        ax.add_patch(box)
        ax.text(1.0, y + 0.58, node["label"], fontsize=10.5, weight="bold", va="center")
        ax.text(1.0, y + 0.24, node.get("detail", ""), fontsize=8.5, va="center", color="#344054")
        if i < n - 1:
            ax.annotate(
                "",
                xy=(5, y - 0.28),
                xytext=(5, y),
                arrowprops={"arrowstyle": "->", "color": "#475467"},
            )
    if title:
        ax.set_title(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
