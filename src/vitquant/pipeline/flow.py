"""The flow diagram's nodes, read off the steps' decisions (compute here; ``plots.pipeline``
draws). One node per decision, in order: its title, its status colour and its figures."""

from __future__ import annotations

from collections.abc import Sequence

from vitquant.pipeline.decision import Decision

TITLES = {
    "fp32": "fp32",
    "analysis": "outlier analysis",
    "static": "static PTQ, all layers",
    "vit-methods": "ViT-aware methods",
    "static-ignore": "static PTQ, outlier layers in float",
    "static-auto": "accuracy-aware ignore list",
    "dynamic": "dynamic int8 (Linear)",
    "qat": "QAT + Optuna",
}

# detail key -> how it reads on the node, in this order
_FIGURES = (
    ("val_acc", "val {:.4f}"),
    ("val_drop_pts", "val drop {:.2f} pts"),
    ("test_acc", "test {:.4f}"),
    ("test_drop_pts", "test drop {:.2f} pts"),
    ("float_layers", "{} float layers"),
    ("size_mb", "{:.2f} MiB"),
    ("latency_ms", "{:.2f} ms/img"),
)


_WIDTH = 110  # characters that fit on a node


def title(d: Decision) -> str:
    """The node's title: the step's name in words (the chosen row for ``final``)."""
    if d.step == "final":
        return f"final: {d.detail.get('variant')} ({d.detail.get('backend')})"
    if d.step.endswith(" .pte"):
        return f"{d.step.removesuffix(' .pte')} .pte (ExecuTorch XNNPACK)"
    return TITLES.get(d.step, d.step)


def detail(d: Decision) -> str:
    """The node's figures; a skip, an analysis or a variant-less step shows its decision."""
    figures = d.detail
    if "val_drop_pts" in figures and figures.get("val_acc") is not None:
        parts = [fmt.format(figures[k]) for k, fmt in _FIGURES[1:] if figures.get(k) is not None]
        if figures.get("simulated"):
            parts.append("simulated")
        if d.status == "final":
            parts.append(f"rule: {figures.get('rule')}")
        return " | ".join(parts)
    if d.step == "analysis":
        return (
            f"{figures['significant_points']}/{figures['points']} points with outliers "
            f"-> {figures['significant_layers']} layers"
        )
    parts = [fmt.format(figures[k]) for k, fmt in _FIGURES if figures.get(k) is not None]
    if parts:
        return " | ".join(parts)
    if d.status != "skip":
        return d.decision
    text = d.reason if d.decision == "skipped" else d.decision
    text = text if "skipped" in text.lower() else f"skipped: {text}"
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def flow_nodes(decisions: Sequence[Decision]) -> list[dict]:
    """``[{label, status, detail}]``, one per decision, for ``plots.pipeline.plot_flow``."""
    return [{"label": title(d), "status": d.status, "detail": detail(d)} for d in decisions]
