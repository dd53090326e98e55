"""`vitquant compare`: several models, same data and recipes, side by side."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vitquant.cli.app import app, console
from vitquant.cli.common import ensure_weights, prepare_out, print_notes, save_result
from vitquant.cli.options import (
    STATS_IMAGES,
    THRESHOLD,
    CalibOpt,
    DataOpt,
    LimitOpt,
    OutOpt,
    OverwriteOpt,
    SeedOpt,
    StatsImagesOpt,
    ThreadsOpt,
    ThresholdOpt,
    ValOpt,
    VerboseOpt,
)
from vitquant.compare import profile_model, summarize
from vitquant.data import load_data
from vitquant.evaluate import set_threads
from vitquant.plots.compare import plot_compare_channels, plot_compare_depth, plot_compare_drops


@app.command()
def compare(
    models: Annotated[
        list[str],
        typer.Argument(help="Two or more models, e.g. cifar_vit cifar_resnet20 cifar_mobilenetv2."),
    ],
    data: DataOpt = "digits",
    calib: CalibOpt = 256,
    val: ValOpt = None,
    limit: LimitOpt = None,
    stats_images: StatsImagesOpt = STATS_IMAGES,
    threshold: ThresholdOpt = THRESHOLD,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Outliers, ranges and int8 drops of several models on the same data -> compare.json.

    Drops are measured on the test split (--limit for a stratified subset) under static
    per-tensor, static per-channel (pt2e, x86) and dynamic int8, all calibrated on the same
    --calib images.
    """
    directory = prepare_out(out, "compare", "-".join(models), overwrite)
    set_threads(threads)
    bundle = load_data(data, calib=calib, val=val, limit=limit, seed=seed)
    print_notes(bundle)
    for name in models:
        ensure_weights(name, checkpoint=None)
    profiles = [
        profile_model(m, bundle, stats_limit=stats_images, threshold=threshold, log=console.print)
        for m in models
    ]
    lines = summarize(profiles)
    directory.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_compare_depth(profiles, directory / "compare_depth.png"),
        plot_compare_drops(profiles, directory / "compare_drops.png"),
        plot_compare_channels(profiles, directory / "compare_channels.png"),
    ]
    table = Table(title=f"compare on {bundle.name} (test n={len(bundle.test_idx)})")
    drop_cols = [f"drop {m.removeprefix('static-')}" for m in profiles[0].drops]
    for col in ("model", "family", "fp32", *drop_cols, "outlier %", "act ch. ratio"):
        table.add_column(col, justify="right")
    for p in profiles:
        table.add_row(
            p.model,
            p.family,
            f"{p.fp32_acc:.4f}",
            *(f"{v:+.2f}" for v in p.drops.values()),
            f"{p.mean_outlier_pct:.2f}",
            f"{p.act_channel_ratio_median:.1f}",
        )
    console.print(table)
    for line in lines:
        console.print(f"- {line}")
    path = save_result(
        directory,
        "compare",
        {
            **bundle.describe(),
            "models": [p.to_dict() for p in profiles],
            "summary": " ".join(lines),
            "summary_lines": lines,
            "plots": [str(p.name) for p in plots],
        },
    )
    console.print(f"wrote {path}")
