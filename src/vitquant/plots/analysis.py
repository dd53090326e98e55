"""Analysis figures (PNG). Rendering only: every number comes from ``vitquant.analysis``.

- ``plot_activation_boxplots``: one box per observed point from its exact quartiles and whiskers,
  sampled outliers (and the true extremes) as red dots, significant points highlighted;
- ``plot_weight_histograms``: a grid of weight histograms, one panel per layer;
- ``plot_outlier_bars``, ``plot_change_score_bars``, ``plot_sqnr_bars``,
  ``plot_sensitivity_bars``: horizontal bar charts, one bar per point / layer;
- ``write_analysis_figures``: the five figures of one analysis (analyze, the pipeline) at once.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitquant.io import atomic_write  # noqa: E402

KIND_COLORS = {
    "patch_embed": "#7f7f7f",
    "qkv": "#1f77b4",
    "proj": "#ff7f0e",
    "fc1": "#2ca02c",
    "fc2": "#d62728",
    "norm": "#9467bd",
    "act": "#8c564b",
    "softmax": "#e377c2",
    "head": "#17becf",
    "conv": "#1f77b4",
    "conv_dw": "#ff7f0e",
    "conv_pw": "#2ca02c",
    "linear": "#bcbd22",
}
SIGNIFICANT = "#d62728"
HIGHLIGHT = "#fde0dd"


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _legend_kinds(ax, kinds) -> None:
    from matplotlib.patches import Patch

    seen = [k for k in KIND_COLORS if k in set(kinds)]
    handles = [Patch(color=KIND_COLORS[k], label=k) for k in seen]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="layer type",
        title_fontsize=8,
    )


def _tall(n: int, per_row: float = 0.17, base: float = 1.8) -> float:
    return max(3.0, base + per_row * n)


def plot_activation_boxplots(stats: list, path: str | Path, *, title: str = "") -> Path:
    """Boxplots of every observed point's activations (rows in forward order).

    Boxes are Q1..Q3 with the median, whiskers reach the most extreme values inside the IQR
    fences, red dots are sampled outliers plus each point's true min and max. Points whose outlier
    share is ``significant`` get a red label and a shaded row. The x axis is symmetric-log.
    """
    n = len(stats)
    fig, ax = plt.subplots(figsize=(11, _tall(n)))
    boxes = []
    for s in stats:
        extremes = [v for v in (s.min, s.max) if v < s.lower_fence or v > s.upper_fence]
        fliers = np.concatenate([np.asarray(s.outlier_sample, dtype=np.float64), extremes])
        boxes.append(
            {
                "label": f"{s.point}  ({s.outlier_pct:.1f}%)",
                "med": s.median,
                "q1": s.q1,
                "q3": s.q3,
                "whislo": s.whisker_low,
                "whishi": s.whisker_high,
                "fliers": fliers,
            }
        )
    positions = np.arange(n)[::-1]  # first point at the top
    for pos, s in zip(positions, stats, strict=True):
        if s.significant:
            ax.axhspan(pos - 0.5, pos + 0.5, color=HIGHLIGHT, zorder=0)
    art = ax.bxp(
        boxes,
        positions=positions,
        orientation="horizontal",
        widths=0.6,
        patch_artist=True,
        flierprops=dict(
            marker="o",
            markersize=2.2,
            markerfacecolor=SIGNIFICANT,
            markeredgecolor="none",
            alpha=0.5,
        ),
        medianprops=dict(color="black", linewidth=1),
    )
    for patch, s in zip(art["boxes"], stats, strict=True):
        patch.set_facecolor(KIND_COLORS.get(s.kind, "#aaaaaa"))
        patch.set_alpha(0.8)
    ax.set_yticks(positions, [b["label"] for b in boxes], fontsize=7)
    for label, s in zip(ax.get_yticklabels(), stats, strict=True):
        if s.significant:
            label.set_color(SIGNIFICANT)
            label.set_fontweight("bold")
    ax.set_xscale("symlog", linthresh=1.0)
    lo, hi = ax.get_xlim()
    ticks = [0.0] + [
        s * v for v in (0.5, 1, 2, 5, 10, 20, 50, 100, 1e3, 1e4, 1e5, 1e6) for s in (-1, 1)
    ]
    ticks = sorted(t for t in ticks if lo <= t <= hi)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("activation value (symmetric log scale; linear within [-1, 1])")
    sig = sum(s.significant for s in stats)
    ax.set_title(
        (title + "\n" if title else "")
        + f"activation distributions of {n} points; {sig} with significant outliers "
        "(red labels, shaded); red dots: outliers",
        fontsize=10,
    )
    _legend_kinds(ax, [s.kind for s in stats])
    return _save(fig, path)


def plot_weight_histograms(
    hists: list, path: str | Path, *, kinds: dict[str, str] | None = None, title: str = ""
) -> Path:
    """A grid of weight histograms (``vitquant.analysis.weights.weight_histograms``), log counts."""
    n = len(hists)
    cols = min(8, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 1.55 * rows + 0.6), squeeze=False)
    kinds = kinds or {}
    for ax, h in zip(axes.flat, hists, strict=False):
        centers = (h.edges[:-1] + h.edges[1:]) / 2
        width = h.edges[1] - h.edges[0]
        color = KIND_COLORS.get(kinds.get(h.name, ""), "#4c72b0")
        ax.bar(centers, np.maximum(h.counts, 0.8), width=width, color=color, linewidth=0)
        ax.set_yscale("log")
        ax.set_title(h.name, fontsize=6.5)
        ax.tick_params(labelsize=5.5, length=2)
        ax.set_ylim(bottom=0.8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle((title + ": " if title else "") + "weight histograms (log counts)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _bars(
    labels: list[str],
    values,
    *,
    title: str,
    xlabel: str,
    colors=None,
    highlight=None,
    vline: float | None = None,
    xscale: str = "linear",
    annotate: str = "{:.2f}",
):
    n = len(labels)
    values = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(9, _tall(n, 0.16)))
    pos = np.arange(n)[::-1]
    shown = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    ax.barh(pos, shown, color=colors or "#4c72b0", height=0.75)
    ax.set_yticks(pos, labels, fontsize=7)
    if highlight is not None:
        for label, flag in zip(ax.get_yticklabels(), highlight, strict=True):
            if flag:
                label.set_color(SIGNIFICANT)
                label.set_fontweight("bold")
    if vline is not None:
        ax.axvline(vline, color=SIGNIFICANT, linestyle="--", linewidth=1)
    if xscale == "symlog":
        finite = np.abs(values[np.isfinite(values) & (values != 0)])
        ax.set_xscale("symlog", linthresh=float(np.min(finite)) if finite.size else 1.0)
    ax.axvline(0, color="black", linewidth=0.6)
    for p, v in zip(pos, values, strict=True):
        if np.isfinite(v):
            ax.annotate(
                annotate.format(v),
                (v, p),
                xytext=(2 if v >= 0 else -2, 0),
                textcoords="offset points",
                va="center",
                fontsize=5.5,
                ha="left" if v >= 0 else "right",
            )
    ax.set_ylim(-0.7, n - 0.3)
    ax.margins(x=0.15)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig, ax


def plot_outlier_bars(stats: list, path: str | Path, *, threshold: float = 5.0) -> Path:
    """Outlier percentage of every observed point; the significance threshold as a dashed line."""
    fig, ax = _bars(
        [s.point for s in stats],
        [s.outlier_pct for s in stats],
        title=f"activation outliers beyond the IQR fences (significant: > {threshold:g}%)",
        xlabel="outlier %",
        colors=[KIND_COLORS.get(s.kind, "#888") for s in stats],
        highlight=[s.significant for s in stats],
        vline=threshold,
        annotate="{:.1f}",
    )
    _legend_kinds(ax, [s.kind for s in stats])
    return _save(fig, path)


def plot_change_score_bars(weights: list, path: str | Path) -> Path:
    """The study's change score per weight tensor (symlog: scores can be huge or negative)."""
    fig, ax = _bars(
        [w.name for w in weights],
        [w.change_score for w in weights],
        title="change score C = |dmean|/mean + |dstd|/std (int8 per-tensor; as in the study)",
        xlabel="change score (symmetric log)",
        colors=[KIND_COLORS.get(w.kind, "#888") for w in weights],
        xscale="symlog",
        annotate="{:.3g}",
    )
    _legend_kinds(ax, [w.kind for w in weights])
    return _save(fig, path)


def plot_sqnr_bars(weights: list, path: str | Path) -> Path:
    """Weight SQNR (dB) per layer for int8 per-tensor and per-channel quantization."""
    n = len(weights)
    fig, ax = plt.subplots(figsize=(9, _tall(n, 0.2)))
    pos = np.arange(n)[::-1]
    per_t = np.array([w.sqnr_db for w in weights], dtype=np.float64)
    per_c = np.array([w.sqnr_db_per_channel for w in weights], dtype=np.float64)
    ax.barh(
        pos + 0.2, np.nan_to_num(per_t, posinf=0), height=0.4, label="per-tensor", color="#4c72b0"
    )
    ax.barh(
        pos - 0.2, np.nan_to_num(per_c, posinf=0), height=0.4, label="per-channel", color="#55a868"
    )
    ax.set_yticks(pos, [w.name for w in weights], fontsize=7)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("weight SQNR (dB, higher = less int8 error)")
    ax.set_title("int8 weight SQNR per layer (symmetric)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def plot_sensitivity_bars(rows: list, path: str | Path) -> Path:
    """Per-layer sensitivity in rank order: KL from the float model with only this layer int8,
    and how much of the all-int8 KL disappears when only this layer stays float."""
    n = len(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, _tall(n, 0.17)), sharey=True)
    pos = np.arange(n)[::-1]
    colors = [KIND_COLORS.get(r.kind, "#888") for r in rows]
    a1.barh(pos, [r.only_kl for r in rows], color=colors, height=0.75)
    a1.set_xlabel("KL(float || only this layer int8), nats/image")
    a1.set_title("quantize only this layer", fontsize=10)
    a2.barh(pos, [r.all_kl - r.all_but_kl for r in rows], color=colors, height=0.75)
    a2.axvline(0, color="black", linewidth=0.6)
    a2.set_xlabel("KL(all int8) - KL(all but this layer int8), nats/image")
    a2.set_title("quantize all but this layer: KL removed by keeping it float", fontsize=10)
    a1.set_yticks(pos, [f"{r.rank}. {r.name}" for r in rows], fontsize=7)
    for ax in (a1, a2):
        ax.set_ylim(-0.7, n - 0.3)
        ax.grid(axis="x", alpha=0.3)
    _legend_kinds(a2, [r.kind for r in rows])
    fig.suptitle(
        f"W8A8 per-layer sensitivity on val (float acc {rows[0].float_acc:.4f}, "
        f"all int8 {rows[0].all_acc:.4f}, KL {rows[0].all_kl:.2e})"
        if rows
        else "sensitivity",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


# The figures of one analysis, by key: what analyze.json's ``figures`` lists.
ANALYSIS_FIGURES = {
    "activation_boxplots": "activation_boxplots.png",
    "weight_histograms": "weight_histograms.png",
    "outlier_pct": "outlier_pct.png",
    "change_score": "change_score.png",
    "sqnr": "sqnr.png",
}


def write_analysis_figures(
    directory: Path,
    stats: list,
    weights: list,
    histograms: list,
    *,
    threshold: float,
    title: str = "",
) -> dict[str, str]:
    """Draw the five figures of ``vitquant analyze`` (and the pipeline's analysis step) into
    ``directory``.

    Args:
        directory: where the PNGs go (``ANALYSIS_FIGURES`` names them).
        stats: the points' activation statistics (``collect_activation_stats``).
        weights: the weight statistics (``weight_stats``).
        histograms: the weight histograms (``weight_histograms``).
        threshold: the outlier % a point is significant above (drawn as a line).
        title: the model, in the figure titles.

    Returns:
        ``{key: file name}`` of the figures written, relative to ``directory``.
    """
    files = ANALYSIS_FIGURES
    plot_activation_boxplots(stats, directory / files["activation_boxplots"], title=title)
    plot_weight_histograms(
        histograms,
        directory / files["weight_histograms"],
        kinds={w.name: w.kind for w in weights},
        title=title,
    )
    plot_outlier_bars(stats, directory / files["outlier_pct"], threshold=threshold)
    plot_change_score_bars(weights, directory / files["change_score"])
    plot_sqnr_bars(weights, directory / files["sqnr"])
    return dict(files)
