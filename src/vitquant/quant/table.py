"""Results rows -> the table every quantize/bench run prints and saves (CSV and Markdown).

Pure formatting: the numbers come from ``vitquant.results.ResultRow`` dicts. ``speedup`` is
``speedup_vs_fp32_eager`` (vs the fp32 PyTorch eager row), ``speedup rt``
``speedup_vs_fp32_same_runtime`` (vs the fp32 row of the row's own runtime, e.g. ONNX Runtime).
"""

from __future__ import annotations

import csv
import io

# (header, row key, format) - the order of the printed, CSV and Markdown tables.
COLUMNS = (
    ("variant", "variant", "{}"),
    ("backend", "backend", "{}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("drop pts", "drop_pts", "{:+.2f}"),
    ("int8/float", "layers", "{}"),
    ("size MiB", "size_mb", "{:.3f}"),
    ("ms/img b1", "lat_1", "{:.3f}"),
    ("ms/img b32", "lat_32", "{:.3f}"),
    ("speedup", "speedup_eager", "{:.2f}x"),
    ("speedup rt", "speedup_runtime", "{:.2f}x"),
    ("score", "score", "{:.4f}"),
    ("simulated", "simulated", "{}"),
    ("ignored", "ignored", "{}"),
)


def table_rows(rows: list[dict]) -> list[dict]:
    """Flatten result dicts into the table's cells (raw values; None when unknown)."""
    out = []
    for r in rows:
        by_batch = r.get("latency_ms_per_image_by_batch") or {}
        ignored = r.get("ignored") or []
        more = f" +{len(ignored) - 4}" if len(ignored) > 4 else ""
        out.append(
            {
                "variant": r["variant"],
                "backend": r["backend"],
                "accuracy": r["accuracy"],
                "drop_pts": r.get("drop_pts"),
                "layers": f"{r.get('int8_layers', 0)}/{r.get('float_layers', 0)}",
                "size_mb": r.get("size_mb"),
                "lat_1": by_batch.get("1"),
                "lat_32": by_batch.get("32"),
                "speedup_eager": r.get("speedup_vs_fp32_eager"),
                "speedup_runtime": r.get("speedup_vs_fp32_same_runtime"),
                "score": r.get("score"),
                "simulated": "yes" if r.get("simulated") else "no",
                "ignored": ", ".join(ignored[:4]) + more,
            }
        )
    return out


def cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted string cells."""
    headers = [h for h, _, _ in COLUMNS]
    body = []
    for r in table_rows(rows):
        body.append(["-" if r[k] is None else fmt.format(r[k]) for _, k, fmt in COLUMNS])
    return headers, body


def to_csv(rows: list[dict]) -> str:
    """CSV with raw numbers (not rounded) in the table's column order."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([k for _, k, _ in COLUMNS])
    for r in table_rows(rows):
        writer.writerow(["" if r[k] is None else r[k] for _, k, _ in COLUMNS])
    return buf.getvalue()


def to_markdown(rows: list[dict], *, title: str | None = None, notes: list[str] = ()) -> str:
    """A Markdown table (formatted cells), with an optional title and notes below."""
    headers, body = cells(rows)
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def to_rich(rows: list[dict], *, title: str | None = None):
    """A ``rich.table.Table`` of the rows (``ignored`` as a count; the files list the names)."""
    from rich.table import Table

    headers, body = cells(rows)
    table = Table(title=title, show_lines=False)
    for h in headers:
        table.add_column(
            h, justify="left" if h in ("variant", "backend") else "right", no_wrap=True
        )
    for row, raw in zip(body, rows, strict=True):
        row[-1] = str(len(raw.get("ignored") or [])) if raw.get("ignored") else "-"
        table.add_row(*row)
    return table
