"""Gather what a run folder holds (result JSONs, plots, commands) into one structure to render.

Compute, then draw: this module only reads files and arranges data; ``html.py`` renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Section of the report each result file and plot belongs to, by command / keyword.
SECTIONS = (
    ("pipeline", "Pipeline decisions"),
    ("outliers", "Activation outliers and weights"),
    ("sensitivity", "Per-layer sensitivity"),
    ("compare", "ViT vs CNN comparison"),
    ("quantize", "Post-training quantization (static and dynamic)"),
    ("qat", "Quantization-aware training and search"),
    ("other", "Other plots"),
)
_KEYWORDS = (
    ("pipeline", ("pipeline", "flow")),
    ("compare", ("compare",)),
    ("sensitivity", ("sensitivity",)),
    ("qat", ("qat", "search", "optuna", "importance", "history")),
    ("quantize", ("quantize", "top_k", "topk", "ptq", "bench", "auto")),
    ("outliers", ("analyze", "outlier", "boxplot", "activation", "weight", "change", "sqnr")),
)


@dataclass
class Plot:
    path: Path
    rel: str
    section: str


@dataclass
class RunContents:
    root: Path
    results: dict[str, list[dict]] = field(default_factory=dict)  # "<rel json>" -> rows
    documents: dict[str, dict] = field(default_factory=dict)  # "<rel json>" -> whole document
    commands: list[tuple[str, str]] = field(default_factory=list)  # (rel json, command line)
    plots: list[Plot] = field(default_factory=list)

    def by_command(self, command: str) -> list[tuple[str, dict]]:
        return [(k, v) for k, v in self.documents.items() if Path(k).stem == command]


def _section_for(rel: str) -> str:
    low = rel.lower()
    for section, words in _KEYWORDS:
        if any(w in low for w in words):
            return section
    return "other"


def collect(root: Path) -> RunContents:
    """Read every ``*.json`` result and ``*.png`` plot under ``root`` (recursively)."""
    root = Path(root)
    contents = RunContents(root=root)
    for path in sorted(root.rglob("*.json")):
        rel = str(path.relative_to(root))
        if path.name in ("report.json",) or "/." in f"/{rel}":
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(doc, dict):
            continue
        contents.documents[rel] = doc
        if isinstance(doc.get("results"), list):
            contents.results[rel] = [r for r in doc["results"] if isinstance(r, dict)]
        if doc.get("command"):
            contents.commands.append((rel, doc["command"]))
    for path in sorted(root.rglob("*.png")):
        rel = str(path.relative_to(root))
        contents.plots.append(Plot(path=path, rel=rel, section=_section_for(rel)))
    return contents
