"""`vitquant quantize` at low bits: run the library's low-bit flow, write JSON/CSV/MD, print."""

from __future__ import annotations

from pathlib import Path

from vitquant.cli.app import console
from vitquant.cli.common import save_result
from vitquant.io import write_text


def run_lowbit_command(
    model_name: str,
    loaded,
    bundle,
    directory: Path,
    setting,
    vit_methods: str | None,
    ignored: list[str],
    *,
    point_errors: bool,
    impact_images: int,
    threads: int | None,
    weights,
    int4_kernels: bool = False,
) -> None:
    """Measure the low-bit study of ``setting`` and write ``quantize.json`` (+ .csv, .md)."""
    from vitquant.cli.quantize_cmd import _print, save_tables
    from vitquant.quant.lowbit.flow import PointErrorJob, lowbit_run
    from vitquant.quant.lowbit.methods import parse_methods
    from vitquant.quant.lowbit.study import LowBitJob

    methods = parse_methods(vit_methods) if vit_methods is not None else None
    job = LowBitJob(
        setting=setting, methods=methods, ignore=tuple(ignored), int4_kernels=int4_kernels
    )
    run = lowbit_run(
        loaded.model,
        bundle,
        loaded.spec,
        job,
        artifacts=directory / "artifacts",
        errors=PointErrorJob(enabled=point_errors, impact_images=impact_images),
        threads=threads,
        weights=weights,
        log=lambda line: console.print(line, highlight=False),
    )
    payload = {
        "model": model_name,
        "checkpoint": loaded.checkpoint,
        "num_classes": loaded.spec.num_classes,
        **bundle.describe(),
        "method": "lowbit",
        "job": job.to_dict(),
        **run.payload(),
    }
    path = save_result(directory, "quantize", payload)
    study = run.study
    title = (
        f"vitquant quantize {model_name} {study.label} ({bundle.name} test, "
        f"{len(bundle.test_idx)} images; simulated)"
    )
    save_tables(directory, "quantize", payload["results"], title=title, notes=study.notes)
    _print(payload["results"], title)
    console.print(f"recipe: {', '.join(study.recipe) or 'min-max'} ({study.choice})")
    for name, table in run.point_errors.items():
        write_text(directory / f"point_errors_{name.replace(' ', '_')}.md", point_table(table))
        corr = table["correlation"]
        console.print(f"per-point errors ({name}): {_corr_text(corr)}")
    extra = ", point_errors_*.md" if run.point_errors else ""
    console.print(f"wrote {path} (+ .csv, .md{extra})")


def _corr_text(corr: dict) -> str:
    parts = []
    for key, label in (
        ("outlier_pct_vs_error", "outlier % vs error"),
        ("outlier_pct_vs_impact", "outlier % vs accuracy impact"),
    ):
        c = corr[key]
        rho = "n/a" if c["rho"] is None else f"{c['rho']:+.2f} (p {c['p_value']:.3g})"
        parts.append(f"Spearman {label} {rho} over {c['n']} points")
    return "; ".join(parts)


def point_table(table: dict, *, top: int | None = None) -> str:
    """Markdown: one line per quantized point, worst SQNR first, outlier % beside it."""
    rows = sorted(table["points"], key=lambda e: e["sqnr_db"])[:top]
    lines = [
        f"Per-point quantization error (local SQNR on {table['val_images']} val images; "
        f"accuracy impact: only that point quantized, {table['impact_images']} val images).",
        "",
        f"{_corr_text(table['correlation'])}.",
        "",
        "| point | kind | quantizer | SQNR dB | impact pts | outlier % | channel ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        impact = "" if e["impact_pts"] is None else f"{e['impact_pts']:.2f}"
        outl = "" if e["outlier_pct"] is None else f"{e['outlier_pct']:.2f}"
        ratio = "" if e["channel_ratio"] is None else f"{e['channel_ratio']:.1f}"
        lines.append(
            f"| {e['point']} | {e['kind']} | {e['quantizer']} | {e['sqnr_db']:.2f} | "
            f"{impact} | {outl} | {ratio} |"
        )
    return "\n".join(lines) + "\n"
