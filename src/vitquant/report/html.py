"""Render a run folder into one self-contained HTML file (plots embedded as data URIs)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from vitquant.io import write_json, write_text
from vitquant.report.collect import SECTIONS, RunContents, collect

ROW_COLUMNS = (
    ("variant", "variant"),
    ("backend", "backend"),
    ("accuracy", "accuracy"),
    ("drop_pts", "drop (pts)"),
    ("int8_layers", "int8 layers"),
    ("float_layers", "float layers"),
    ("size_mb", "size MiB"),
    ("latency_ms_per_image", "ms/img"),
    ("speedup_vs_fp32_eager", "speedup vs fp32 eager"),
    ("speedup_vs_fp32_same_runtime", "speedup vs fp32 same runtime"),
    ("agreement_pt2e", "agreement with twin"),
    ("score", "score"),
    ("simulated", "simulated"),
)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    if value is None:
        return "-"
    return str(value)


def _notes(doc: dict) -> list[str]:
    """A result file's remarks (e.g. which operators did not lower to XNNPACK)."""
    notes = doc.get("notes")
    return [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(contents: RunContents, *, title: str = "vitquant report") -> str:
    env = Environment(
        loader=PackageLoader("vitquant.report", "templates"), autoescape=select_autoescape()
    )
    env.filters["fmt"] = _fmt
    sections = []
    for key, heading in SECTIONS:
        plots = [
            {"rel": p.rel, "uri": _data_uri(p.path)} for p in contents.plots if p.section == key
        ]
        docs = [(rel, doc) for rel, doc in contents.documents.items() if _doc_section(rel) == key]
        if plots or docs:
            sections.append({"key": key, "heading": heading, "plots": plots, "docs": docs})
    tables = [
        {"source": rel, "rows": rows, "notes": _notes(contents.documents.get(rel, {}))}
        for rel, rows in contents.results.items()
        if rows
    ]
    pipeline = next(
        (doc for rel, doc in contents.documents.items() if Path(rel).name == "pipeline.json"), None
    )
    analyze = next(
        (doc for rel, doc in contents.documents.items() if Path(rel).name == "analyze.json"), None
    )
    from vitquant.report.lowbit import lowbit_story

    stories = [
        {"source": rel, **story}
        for rel, doc in contents.documents.items()
        if (story := lowbit_story(doc)) is not None
    ]
    template = env.get_template("report.html.j2")
    return template.render(
        title=title,
        generated=dt.datetime.now().isoformat(timespec="seconds"),
        root=str(contents.root),
        columns=ROW_COLUMNS,
        tables=tables,
        sections=sections,
        pipeline=pipeline,
        analyze=analyze,
        stories=stories,
        commands=contents.commands,
        n_plots=len(contents.plots),
    )


def _doc_section(rel: str) -> str:
    stem = Path(rel).stem
    return {
        "pipeline": "pipeline",
        "analyze": "outliers",
        "sensitivity": "sensitivity",
        "compare": "compare",
        "quantize": "quantize",
        "bench": "quantize",
        "qat": "qat",
        "search": "qat",
    }.get(stem, "")


def build_report(root: Path, *, out: Path | None = None) -> tuple[Path, dict]:
    """Write ``report.html`` (self-contained) and ``report.json`` (what it embeds) in ``root``."""
    root = Path(root)
    contents = collect(root)
    html_path = out or root / "report.html"
    write_text(html_path, render(contents, title=f"vitquant report: {root.name}"))
    summary = {
        "html": str(html_path),
        "plots": [p.rel for p in contents.plots],
        "n_plots": len(contents.plots),
        "result_files": sorted(contents.documents),
        "commands": [c for _, c in contents.commands],
    }
    write_json(root / "report.json", summary)
    return html_path, summary
