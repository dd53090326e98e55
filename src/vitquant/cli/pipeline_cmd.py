"""`vitquant pipeline`: the whole study as one command, every decision recorded."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vitquant.cli.app import app, console
from vitquant.cli.common import model_and_data, prepare_out, save_result, use_x86_lowering
from vitquant.cli.options import (
    MAX_DROP,
    PER_CHANNEL,
    QUANTIZER,
    STATS_IMAGES,
    THRESHOLD,
    ABitsOpt,
    BitsRuleOpt,
    CalibOpt,
    CheckpointOpt,
    DataOpt,
    ExportOpt,
    LimitOpt,
    LowerOpt,
    MaxDropOpt,
    ModelArg,
    NumClassesOpt,
    ObserverOpt,
    OpenVinoOpt,
    OutOpt,
    OverwriteOpt,
    PerChannelOpt,
    PretrainedOpt,
    QuantAttnOpt,
    QuantizerOpt,
    QuantLnOpt,
    RandomOpt,
    SeedOpt,
    StatsImagesOpt,
    ThreadsOpt,
    ThresholdOpt,
    ValOpt,
    VerboseOpt,
    VitMethodsOpt,
    WBitsOpt,
    X86CppWrapperOpt,
    X86Float,
    X86FloatOpt,
    X86Int8AttnOpt,
)
from vitquant.errors import VitquantError
from vitquant.evaluate import set_threads
from vitquant.pipeline import PipelineConfig, run_pipeline
from vitquant.plots.pipeline import plot_flow


@app.command()
def pipeline(
    model: ModelArg,
    data: DataOpt = "digits",
    max_drop: MaxDropOpt = MAX_DROP,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomOpt = False,
    num_classes: NumClassesOpt = None,
    calib: CalibOpt = 256,
    val: ValOpt = None,
    limit: LimitOpt = None,
    threshold: ThresholdOpt = THRESHOLD,
    stats_images: StatsImagesOpt = STATS_IMAGES,
    per_channel: PerChannelOpt = PER_CHANNEL,
    quantizer: QuantizerOpt = QUANTIZER,
    export: ExportOpt = "none",
    openvino: OpenVinoOpt = False,
    observer: ObserverOpt = None,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials if QAT is needed.")] = 4,
    qat_epochs: Annotated[int, typer.Option(min=1, help="Epochs per QAT trial.")] = 2,
    qat_train_limit: Annotated[
        int | None, typer.Option(min=1, help="Training images per QAT epoch [default: all].")
    ] = None,
    qat: Annotated[
        bool,
        typer.Option(
            "--qat/--no-qat",
            help="--no-qat: never run the QAT branch, even when post-training misses "
            "--max-drop (the decision is recorded).",
        ),
    ] = True,
    force_qat: Annotated[bool, typer.Option(help="Run the QAT branch even within budget.")] = False,
    sensitivity_limit: Annotated[
        int | None,
        typer.Option(min=1, help="Val images for the sensitivity ranking [default: all]."),
    ] = None,
    lower: LowerOpt = True,
    x86_float: X86FloatOpt = X86Float.auto,
    x86_cpp_wrapper: X86CppWrapperOpt = False,
    x86_int8_attention: X86Int8AttnOpt = False,
    wbits: WBitsOpt = 8,
    abits: ABitsOpt = 8,
    bits: BitsRuleOpt = None,
    quantize_attention: QuantAttnOpt = False,
    quantize_layernorm: QuantLnOpt = False,
    vit_methods: VitMethodsOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Float -> outliers -> static PTQ -> PTQ ignoring outlier layers -> auto ignore list ->
    dynamic -> (QAT + Optuna if still over --max-drop) -> final choice -> pipeline.json.

    With a low-bit target (--wbits/--abits below 8, --bits, --quantize-attention) the static
    step measures its min-max quantization and, over --max-drop, the ViT-aware methods run
    before the ignore list (simulated rows). Choices use the val images; test figures are
    reported. The final choice, among int8
    variants within the val budget: the fastest when it leads by more than the latency spread,
    else the smallest file, then the most int8 layers; a simulated (emulated int8) variant only
    when nothing executed meets the budget; if none meets it, the most accurate on val.
    """
    use_x86_lowering(x86_float, x86_cpp_wrapper)
    if force_qat and not qat:
        raise VitquantError("--force-qat and --no-qat contradict each other: pass one of them.")
    from vitquant.cli.quantize_cmd import lowbit_setting
    from vitquant.quant.lowbit.methods import parse_methods

    lowbit = lowbit_setting(
        wbits, abits, bits, quantize_attention, quantize_layernorm, observer, calib
    )
    methods = parse_methods(vit_methods) if vit_methods is not None else None
    if methods is not None and lowbit is None:
        raise VitquantError(
            "--vit-methods needs a low-bit target: add --wbits/--abits below 8, --bits or "
            "--quantize-attention (int8 of the Linear layers runs on real int8 kernels)."
        )
    # Built first: a bad --quantizer/--export fails before anything is loaded or written.
    cfg = PipelineConfig(
        max_drop=max_drop,
        threshold=threshold,
        stats_images=stats_images,
        per_channel=per_channel,
        observer=observer,
        backend=quantizer,
        export=export,
        openvino=openvino,
        trials=trials,
        qat_epochs=qat_epochs,
        qat_train_limit=qat_train_limit,
        force_qat=force_qat,
        sensitivity_limit=sensitivity_limit,
        lower=lower,
        int8_attention=x86_int8_attention,
        qat=qat,
        lowbit=lowbit,
        vit_methods=methods,
    )
    directory = prepare_out(out, "pipeline", model, overwrite)
    set_threads(threads)
    loaded, bundle = model_and_data(
        model,
        data=data,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_weights=random_weights,
        num_classes=num_classes,
        calib=calib,
        val=val,
        limit=limit,
        seed=seed,
    )
    from vitquant.pipeline.bound import analysis_step, qat_step

    run = run_pipeline(
        loaded.model,
        loaded.spec,
        bundle,
        cfg,
        out=directory,
        analyze=analysis_step(loaded.model, loaded.spec, bundle, cfg, log=console.print),
        qat_search=qat_step(model, loaded, bundle, cfg, directory, log=console.print),
        threads=threads,
        log=console.print,
    )
    flow_png = plot_flow(
        run.flow,
        directory / "pipeline_flow.png",
        title=f"{model} on {bundle.name}: budget {max_drop} pts",
    )
    table = Table(title=f"pipeline {model} ({bundle.name}, test n={len(bundle.test_idx)})")
    for col in (
        "variant",
        "backend",
        "val drop",
        "test acc",
        "test drop",
        "float layers",
        "MiB",
        "ms/img",
        "IQR ms",
        "simulated",
    ):
        table.add_column(col, justify="right")
    for r in run.rows:
        timed = r.latency_ms_per_image is not None
        table.add_row(
            r.variant,
            r.backend,
            f"{run.val_drop(r):.2f}",
            f"{r.accuracy:.4f}",
            f"{r.drop_pts:.2f}",
            str(r.float_layers),
            f"{r.size_mb:.2f}",
            f"{r.latency_ms_per_image:.3f}" if timed else "-",
            f"{r.latency_spread_ms:.3f}" if timed and r.latency_spread_ms is not None else "-",
            "yes" if r.simulated else "",
        )
    # Wide enough for every column when stdout is not a terminal (rich defaults to 80).
    wide = console if console.is_terminal else Console(width=max(console.width, 120))
    wide.print(table)
    for d in run.decisions:
        console.print(f"[bold]{d.step}[/]: {d.decision} ({d.reason})")
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        **bundle.describe(),
        "subsets": bundle.sizes(),
        **run.to_dict(),
        "plots": [flow_png.name],
    }
    path = save_result(directory, "pipeline", payload)
    console.print(f"final: [bold]{run.final.variant}[/] ({run.final.backend}) - {run.final_reason}")
    console.print(f"wrote {path}")
