"""`vitquant analyze` (activation outliers, weight change, plots) and `vitquant sensitivity`."""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated

import typer
from rich.table import Table

from vitquant.cli.app import app, console
from vitquant.cli.common import model_and_data, prepare_out, save_result
from vitquant.cli.options import (
    THRESHOLD,
    CalibOpt,
    CheckpointOpt,
    DataOpt,
    ModelArg,
    NumClassesOpt,
    OutOpt,
    OverwriteOpt,
    PlotsOpt,
    PretrainedOpt,
    RandomOpt,
    SeedOpt,
    ThreadsOpt,
    ThresholdOpt,
    ValOpt,
    VerboseOpt,
)
from vitquant.distributed import dist_context
from vitquant.errors import VitquantError
from vitquant.evaluate import set_threads
from vitquant.io import write_text

# Inference batches (analyze, sensitivity); QAT's --batch-size is the training batch.
BatchOpt = Annotated[int, typer.Option(help="Images per forward pass.")]


def csv_text(rows: list[dict]) -> str:
    """CSV of flat dicts (nested values are written as their repr)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v for k, v in row.items()})
    return buf.getvalue()


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _short_module(s) -> str:
    """The point's module for the table: ``=`` when the same, relative to the point's block."""
    if s.module == s.point:
        return "="
    prefix = f"{s.block_name}." if s.block_name else ""
    return s.module.removeprefix(prefix) if prefix and s.module.startswith(prefix) else s.module


@app.command("analyze")
def analyze(
    model: ModelArg,
    data: DataOpt = "digits",
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomOpt = False,
    num_classes: NumClassesOpt = None,
    calib: CalibOpt = 256,
    val: ValOpt = None,
    seed: SeedOpt = 0,
    threshold: ThresholdOpt = THRESHOLD,
    batch_size: BatchOpt = 64,
    sample_size: Annotated[
        int, typer.Option(help="Random values and outliers kept per point for the boxplots.")
    ] = 2000,
    plots: PlotsOpt = True,
    threads: ThreadsOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Activation outliers per layer (exact streaming statistics over the calibration images),
    weight statistics and change scores, summaries by block and layer type, plots -> analyze.json.
    """
    from vitquant.analysis.stats import collect_activation_stats
    from vitquant.analysis.summary import analysis_document
    from vitquant.analysis.weights import weight_stats

    if calib <= 0:
        raise VitquantError("--calib must be > 0: it is the number of images analysed.")
    if batch_size <= 0 or sample_size < 0:
        raise VitquantError("--batch-size must be > 0 and --sample-size >= 0.")
    directory = prepare_out(out, "analyze", model, overwrite)
    loaded, bundle = model_and_data(
        model,
        data=data,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_weights=random_weights,
        num_classes=num_classes,
        calib=calib,
        val=val,
        limit=None,
        seed=seed,
    )
    ctx = dist_context()  # under torchrun each rank streams its shard; rank 0 writes
    if ctx.world == 1 or threads:
        set_threads(threads)
    start = time.perf_counter()
    stats = collect_activation_stats(
        loaded.model,
        bundle,
        loaded.spec,
        threshold=threshold,
        batch_size=batch_size,
        sample_size=sample_size,
        seed=seed,
        ctx=ctx,
    )
    if not ctx.is_main:
        return
    weights = weight_stats(loaded.model, threshold=threshold)
    seconds = time.perf_counter() - start

    doc = analysis_document(stats, weights)
    layers, weight_rows, summary = doc["layers"], doc["weights"], doc["summary"]
    point_of = {s.point: s for s in stats}
    weight_of = {w.name: w for w in weights}
    top_outliers = [point_of[p] for p in doc["top_outliers"]]
    top_change = [weight_of[n] for n in doc["top_change_scores"]]
    figures = {}
    if plots:
        from vitquant.analysis.weights import weight_histograms
        from vitquant.plots.analysis import write_analysis_figures

        figures = write_analysis_figures(
            directory,
            stats,
            weights,
            weight_histograms(loaded.model),
            threshold=threshold,
            title=model,
        )
    files = {
        "layers_csv": "analyze_layers.csv",
        "weights_csv": "analyze_weights.csv",
        "blocks_csv": "analyze_blocks.csv",
        "kinds_csv": "analyze_kinds.csv",
    }
    write_text(directory / files["layers_csv"], csv_text(layers))
    write_text(
        directory / files["weights_csv"],
        csv_text([{**w, "shape": "x".join(map(str, w["shape"]))} for w in weight_rows]),
    )
    write_text(directory / files["blocks_csv"], csv_text(summary["activations"]["by_block"]))
    write_text(directory / files["kinds_csv"], csv_text(summary["activations"]["by_kind"]))
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        "family": loaded.spec.family,
        **bundle.describe(),
        "role": "calib",
        "n_images": min(calib, len(bundle.calib_idx)),
        "threshold_pct": threshold,
        "seconds": seconds,
        **doc,
        "figures": figures,
        "files": files,
    }
    path = save_result(directory, "analyze", payload)

    table = Table(title=f"Top-10 activation outlier points ({model}, {payload['n_images']} images)")
    table.add_column("point", no_wrap=True)
    table.caption = "module: the Linear/Conv an ignore list takes (= the point itself)"
    table.add_column("module", overflow="fold")
    for col in ("outlier %", "min", "max", "ch.ratio"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in top_outliers:
        table.add_row(
            s.point,
            _short_module(s),
            f"{s.outlier_pct:.2f}",
            _fmt(s.min),
            _fmt(s.max),
            f"{s.channel_absmax_ratio:.1f}",
            style="bold red" if s.significant else None,
        )
    console.print(table)
    table = Table(title="Top-5 weight change scores (study's C, int8 per-tensor)")
    table.add_column("rank", justify="right")
    table.add_column("layer", no_wrap=True)
    for col in ("change score", "SQNR dB", "per-ch. dB", "rel MSE"):
        table.add_column(col, justify="right")
    for w in top_change:
        table.add_row(
            str(w.change_rank),
            w.name,
            f"{w.change_score:.4g}",
            f"{w.sqnr_db:.2f}",
            f"{w.sqnr_db_per_channel:.2f}",
            f"{w.rel_mse:.2e}",
        )
    console.print(table)
    sig = sum(s.significant for s in stats)
    console.print(
        f"{len(stats)} points, {sig} significant (> {threshold:g}% outliers); "
        f"{len(weights)} weight tensors; {seconds:.1f} s"
    )
    console.print(f"wrote {path}" + (f" and {len(figures)} figures" if figures else ""))


@app.command("sensitivity")
def sensitivity(
    model: ModelArg,
    data: DataOpt = "digits",
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomOpt = False,
    num_classes: NumClassesOpt = None,
    val: ValOpt = None,
    calib: CalibOpt = 256,
    seed: SeedOpt = 0,
    layers: Annotated[
        str | None,
        typer.Option(help="Comma-separated layers to test [default: every Linear/Conv]."),
    ] = None,
    batch_size: BatchOpt = 128,
    plots: PlotsOpt = True,
    threads: ThreadsOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Per-layer W8A8 sensitivity on the validation images: only this layer int8, and every
    layer but this one int8; ranked (about 2 x layers evaluations) -> sensitivity.json."""
    from vitquant.analysis.sensitivity import __doc__ as method
    from vitquant.analysis.sensitivity import per_layer_sensitivity
    from vitquant.analysis.summary import sensitivity_summary

    if calib <= 0:
        raise VitquantError("--calib must be > 0: activation ranges are calibrated on it.")
    directory = prepare_out(out, "sensitivity", model, overwrite)
    loaded, bundle = model_and_data(
        model,
        data=data,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_weights=random_weights,
        num_classes=num_classes,
        calib=calib,
        val=val,
        limit=None,
        seed=seed,
    )
    ctx = dist_context()  # under torchrun each rank evaluates its shard; rank 0 writes
    if ctx.world == 1 or threads:
        set_threads(threads)
    chosen = [n.strip() for n in layers.split(",") if n.strip()] if layers else None
    start = time.perf_counter()
    rows = per_layer_sensitivity(
        loaded.model, bundle, loaded.spec, role="val", layers=chosen, batch_size=batch_size, ctx=ctx
    )
    if not ctx.is_main:
        return
    seconds = time.perf_counter() - start
    figures = {}
    if plots and rows:
        from vitquant.plots.analysis import plot_sensitivity_bars

        figures["sensitivity"] = "sensitivity.png"
        plot_sensitivity_bars(rows, directory / figures["sensitivity"])
    write_text(directory / "sensitivity.csv", csv_text([r.to_dict() for r in rows]))
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        **bundle.describe(),
        "role": "val",
        "method": " ".join(method.split()),
        "ranked_by": "only_kl (descending)",
        "float_acc": rows[0].float_acc if rows else None,
        "all_acc": rows[0].all_acc if rows else None,
        "all_kl": rows[0].all_kl if rows else None,
        "seconds": seconds,
        "layers": [r.to_dict() for r in rows],
        "summary": sensitivity_summary(rows),
        "figures": figures,
        "files": {"csv": "sensitivity.csv"},
    }
    path = save_result(directory, "sensitivity", payload)
    table = Table(
        title=f"Most sensitive layers ({model}, {len(bundle.val_idx)} val images, W8A8 simulated)"
    )
    table.add_column("rank", justify="right")
    table.add_column("layer", no_wrap=True)
    for col in ("only acc", "only KL", "agree", "rest acc", "rest KL"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows[:10]:
        table.add_row(
            str(r.rank),
            r.name,
            f"{r.only_acc:.4f}",
            f"{r.only_kl:.1e}",
            f"{r.only_agreement:.3f}",
            f"{r.all_but_acc:.4f}",
            f"{r.all_but_kl:.1e}",
        )
    table.caption = "only: this layer int8; rest: every layer but this one int8 (KL vs float)"
    console.print(table)
    if rows:
        console.print(
            f"float acc {rows[0].float_acc:.4f}, all layers int8 {rows[0].all_acc:.4f} "
            f"(KL {rows[0].all_kl:.2e}); {seconds:.1f} s"
        )
    console.print(f"wrote {path}")
