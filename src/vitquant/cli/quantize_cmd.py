"""`vitquant quantize` (static/dynamic PTQ, ignore lists, ONNX Runtime) and `vitquant bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vitquant.cli.app import app, console
from vitquant.cli.common import (
    invocation,
    model_and_data,
    prepare_out,
    save_result,
    use_x86_lowering,
)
from vitquant.cli.options import (
    MAX_DROP,
    PER_CHANNEL,
    QUANTIZER,
    SYMMETRIC_ACTIVATIONS,
    ABitsOpt,
    BitsRuleOpt,
    CalibOpt,
    CheckpointOpt,
    DataOpt,
    ExportOpt,
    IgnoreFileOpt,
    IgnoreOpt,
    IgnoreTypeOpt,
    LatencyBatchOpt,
    LimitOpt,
    LowerOpt,
    MaxDropOpt,
    ModelArg,
    NumClassesOpt,
    ObserverOpt,
    OnnxOpt,
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
    SymActOpt,
    ThreadsOpt,
    ValOpt,
    VerboseOpt,
    VitMethodsOpt,
    WAccOpt,
    WBitsOpt,
    WSizeOpt,
    WSpeedOpt,
    X86CppWrapperOpt,
    X86Float,
    X86FloatOpt,
    X86Int8AttnOpt,
)
from vitquant.errors import VitquantError
from vitquant.io import check_writable, write_text
from vitquant.results import ScoreWeights

METHODS = {
    "all": ("fp32", "dynamic", "static", "static-ignore", "static-auto"),
    "static": ("fp32", "static", "static-ignore", "static-auto"),
    "dynamic": ("fp32", "dynamic"),
}


def parse_top_k(text: str | None) -> tuple[int, ...]:
    """``0..10`` (inclusive range), ``0,2,5`` (list) or ``N`` (= ``0..N``)."""
    if not text:
        return ()
    try:
        if ".." in text:
            lo, hi = (int(p) for p in text.split("..", 1))
            ks = tuple(range(lo, hi + 1))
        elif "," in text:
            ks = tuple(int(p) for p in text.split(","))
        else:
            ks = tuple(range(int(text) + 1))
    except ValueError as exc:
        raise VitquantError(
            f"--ignore-top-k {text!r}: use a range 0..10, a list 0,2,5 or a number N (0..N)."
        ) from exc
    if not ks or min(ks) < 0:
        raise VitquantError(f"--ignore-top-k {text!r}: k values must be >= 0.")
    return ks


def lowbit_setting(wbits, abits, rules, attention, layernorm, observer, calib):
    """The ``LowBitPTQ`` the low-bit options ask for, or None for the int8 study."""
    if wbits == 8 and abits == 8 and not rules and not attention and not layernorm:
        return None
    from vitquant.quant.lowbit import LowBitPTQ

    return LowBitPTQ(
        wbits=wbits,
        abits=abits,
        rules=tuple(rules or ()),
        quantize_attention=attention,
        quantize_layernorm=layernorm,
        observer=observer if observer in ("minmax", "percentile") else "minmax",
        calib=calib,
    )


def save_tables(directory: Path, command: str, rows: list[dict], *, title: str, notes=()) -> None:
    """``DIR/<command>.csv`` and ``DIR/<command>.md`` twins of the JSON results."""
    from vitquant.quant.table import to_csv, to_markdown

    write_text(directory / f"{command}.csv", to_csv(rows))
    write_text(directory / f"{command}.md", to_markdown(rows, title=title, notes=list(notes)))


@app.command("quantize")
def quantize(
    model: ModelArg,
    method: Annotated[
        str, typer.Option(help="static (pt2e + ORT QDQ), dynamic (int8 Linear), or all.")
    ] = "all",
    data: DataOpt = "digits",
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomOpt = False,
    num_classes: NumClassesOpt = None,
    limit: LimitOpt = None,
    val: ValOpt = None,
    calib: CalibOpt = 256,
    seed: SeedOpt = 0,
    per_channel: PerChannelOpt = PER_CHANNEL,
    symmetric_activations: SymActOpt = SYMMETRIC_ACTIVATIONS,
    quantizer: QuantizerOpt = QUANTIZER,
    export: ExportOpt = "none",
    observer: ObserverOpt = None,
    percentile: Annotated[
        float, typer.Option(min=0, max=100, help="Percentile of --observer percentile.")
    ] = 99.99,
    ignore: IgnoreOpt = None,
    ignore_file: IgnoreFileOpt = None,
    ignore_type: IgnoreTypeOpt = None,
    max_drop: MaxDropOpt = MAX_DROP,
    auto_val_limit: Annotated[
        int | None,
        typer.Option(min=1, help="--ignore auto: val images per step [default: all]."),
    ] = None,
    ignore_top_k: Annotated[
        str | None,
        typer.Option(
            help="Sweep k = layers with the most activation outliers kept in float: "
            "0..10, 0,2,5 or N. Plots accuracy against k."
        ),
    ] = None,
    wbits: WBitsOpt = 8,
    abits: ABitsOpt = 8,
    bits: BitsRuleOpt = None,
    quantize_attention: QuantAttnOpt = False,
    quantize_layernorm: QuantLnOpt = False,
    vit_methods: VitMethodsOpt = None,
    point_errors: Annotated[
        bool, typer.Option(help="Low-bit runs: the per-point error table and its correlations.")
    ] = True,
    impact_images: Annotated[
        int, typer.Option(min=0, help="Low-bit runs: val images of each point's accuracy impact.")
    ] = 256,
    int4_kernels: Annotated[
        bool,
        typer.Option(
            help="Low-bit runs with --wbits 4: also int4 weights x int8 dynamic activations "
            "(8da4w) lowered to ExecuTorch XNNPACK's real 4-bit kernels, measured and timed "
            "(lowering takes minutes)."
        ),
    ] = False,
    onnx: OnnxOpt = True,
    openvino: OpenVinoOpt = False,
    lower: LowerOpt = True,
    x86_float: X86FloatOpt = X86Float.auto,
    x86_cpp_wrapper: X86CppWrapperOpt = False,
    x86_int8_attention: X86Int8AttnOpt = False,
    latency_batch: LatencyBatchOpt = 1,
    threads: ThreadsOpt = None,
    w_acc: WAccOpt = 1.0,
    w_size: WSizeOpt = 0.25,
    w_speed: WSpeedOpt = 0.25,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Static / dynamic int8 variants with ignore lists, ORT int8 twins -> quantize.json/csv/md.

    With --wbits/--abits below 8, --bits rules, --quantize-attention, --quantize-layernorm or
    --vit-methods it runs the low-bit study instead: a min-max row, each ViT-aware method alone
    and the recipe (the methods that help on val), all simulated, plus the per-point error
    table (SQNR, accuracy impact, outlier %) and its rank correlations.
    """
    use_x86_lowering(x86_float, x86_cpp_wrapper)
    from vitquant.quant.configs import DynamicPTQ, StaticPTQ
    from vitquant.quant.run import QuantizeJob, run_variants
    from vitquant.quant.scope import IgnoreScope

    if method not in METHODS:
        raise VitquantError(f"--method {method!r}: choose static, dynamic or all.")
    lowbit = lowbit_setting(
        wbits, abits, bits, quantize_attention, quantize_layernorm, observer, calib
    )
    if vit_methods is not None and lowbit is None:
        from vitquant.quant.lowbit import LowBitPTQ

        lowbit = LowBitPTQ(calib=calib)  # W8A8 with the named methods
    directory = prepare_out(out, "quantize", model, overwrite)
    entries = list(ignore or [])
    auto = "auto" in entries
    entries = [e for e in entries if e != "auto"]
    scope = IgnoreScope.from_cli(entries, ignore_type or [], ignore_file)
    static = StaticPTQ(
        backend=quantizer,
        per_channel=per_channel,
        symmetric_activations=symmetric_activations,
        observer=observer,
        percentile=percentile,
        calib=calib,
        int8_attention=x86_int8_attention,
    )
    job = QuantizeJob(
        static=static,
        dynamic=DynamicPTQ(),
        ignore=scope,
        auto_max_drop=max_drop if auto else None,
        auto_val_limit=auto_val_limit,
        top_k=parse_top_k(ignore_top_k),
        variants=METHODS[method],
        onnx=onnx,
        openvino=openvino,
        export=export,
        lower=lower,
        latency_batches=tuple(sorted({1, 32, latency_batch})),
        latency_batch=latency_batch,
        threads=threads,
        weights=ScoreWeights(w_acc, w_size, w_speed),
    )
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
    # An ignore entry that matches nothing must fail before anything is written.
    ignored = scope.resolve(loaded.model).modules if scope else []
    if lowbit is not None:
        from vitquant.cli.lowbit_out import run_lowbit_command

        run_lowbit_command(
            model, loaded, bundle, directory, lowbit, vit_methods, ignored,
            point_errors=point_errors, impact_images=impact_images, threads=threads,
            int4_kernels=int4_kernels,
            weights=ScoreWeights(w_acc, w_size, w_speed),
        )  # fmt: skip
        return
    result = run_variants(
        loaded.model,
        bundle,
        loaded.spec,
        job,
        artifacts=directory / "artifacts",
        log=lambda line: console.print(line, highlight=False),
        progress=True,
    )
    payload = {
        "model": model,
        "checkpoint": loaded.checkpoint,
        "num_classes": loaded.spec.num_classes,
        **bundle.describe(),
        "method": method,
        "job": job.to_dict(),
        "score": {
            "formula": "w_acc*accuracy + w_size*(1 - size/size_fp32) + "
            "w_speed*(1 - latency/latency_fp32), vs the pytorch fp32 row",
            "weights": {"accuracy": w_acc, "size": w_size, "speed": w_speed},
        },
        **result.payload(),
    }
    plots = _plots(directory, result, model)
    payload["plots"] = [str(p) for p in plots]
    path = save_result(directory, "quantize", payload)
    title = f"vitquant quantize {model} ({bundle.name} test, {len(bundle.test_idx)} images)"
    save_tables(directory, "quantize", payload["results"], title=title, notes=result.notes)
    _print(payload["results"], title, result)
    console.print(f"wrote {path} (+ .csv, .md), artifacts in {directory / 'artifacts'}")


def _plots(directory: Path, result, model: str) -> list[Path]:
    from vitquant.plots.quantize import plot_auto_steps, plot_top_k

    out = []
    if result.sweep:
        fp32 = next(r for r in result.rows if r.variant == "fp32" and r.backend == "pytorch")
        out.append(
            plot_top_k(
                result.sweep,
                directory / "quantize_topk.png",
                fp32={"test": fp32.accuracy},
                title=f"{model}: accuracy vs k outlier layers in float",
            )
        )
    if result.auto and len(result.auto.steps) > 1:
        out.append(
            plot_auto_steps(
                result.auto.steps,
                directory / "quantize_auto.png",
                max_drop=result.auto.max_drop,
                title=f"{model}: --ignore auto steps (val)",
            )
        )
    return out


def _print(rows: list[dict], title: str, result=None) -> None:
    from rich.console import Console

    from vitquant.quant.table import to_rich

    # Wide enough for every column when stdout is not a terminal (rich defaults to 80).
    out = console if console.is_terminal else Console(width=max(console.width, 150))
    out.print(to_rich(rows, title=title))
    if result is None:
        return
    if result.auto:
        a = result.auto
        status = "within" if a.met else "[red]missed[/]"
        console.print(
            f"--ignore auto: {len(a.ignored)} layer(s) in float ({', '.join(a.ignored) or '-'}); "
            f"val drop {a.drop_pts:.2f} pts, {status} the {a.max_drop} pt budget"
        )
        test = next((r for r in result.rows if r.variant == "static-auto"), None)
        if test is not None and test.drop_pts > a.max_drop:
            console.print(
                f"[yellow]on test the drop is {test.drop_pts:.2f} pts: missed the "
                f"budget by {test.drop_pts - a.max_drop:.2f} pts[/]"
            )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(
        f"latency: median after warm-up, {result.threads} thread(s) for PyTorch, ONNX Runtime "
        "and ExecuTorch (XNNPACK pool); speedup = fp32 PyTorch eager latency / latency, "
        "speedup rt = fp32 latency of the same runtime / latency (same batch); score = "
        "w_acc*acc + w_size*(1-size/size_fp32) + w_speed*(1-lat/lat_fp32)"
    )


@app.command("bench")
def bench(
    run_dir: Annotated[Path, typer.Argument(help="A `vitquant quantize` output folder.")],
    data: Annotated[
        str | None, typer.Option(help="Data to evaluate on [default: the quantize run's].")
    ] = None,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    lower: LowerOpt = True,
    x86_float: X86FloatOpt = X86Float.auto,
    x86_cpp_wrapper: X86CppWrapperOpt = False,
    latency_batch: LatencyBatchOpt = 1,
    threads: ThreadsOpt = None,
    w_acc: WAccOpt = 1.0,
    w_size: WSizeOpt = 0.25,
    w_speed: WSpeedOpt = 0.25,
    out: Annotated[Path | None, typer.Option(help="Output folder [default: RUN_DIR].")] = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Re-measure the saved variants of a quantize run (accuracy, size, latency) -> bench.json."""
    use_x86_lowering(x86_float, x86_cpp_wrapper)
    from vitquant.data import check_compatible, load_data
    from vitquant.quant.bench import bench_rows
    from vitquant.registry import get_spec

    source = run_dir / "quantize.json"
    if not source.is_file():
        raise VitquantError(f"{source} not found: pass the --out folder of `vitquant quantize`.")
    document = json.loads(source.read_text())
    directory = out or run_dir
    check_writable(directory / "bench.json", overwrite=overwrite)
    spec = get_spec(document["model"], num_classes=document.get("num_classes"))
    bundle = load_data(data or document["data"], calib=0, limit=limit, seed=seed)
    check_compatible(bundle, spec)
    rows = bench_rows(
        document,
        bundle,
        spec,
        threads=threads,
        lower=lower,
        latency_batches=tuple(sorted({1, 32, latency_batch})),
        latency_batch=latency_batch,
        weights=ScoreWeights(w_acc, w_size, w_speed),
        log=lambda line: console.print(line, highlight=False),
    )
    results = [r.to_dict() for r in rows]
    payload = {
        "model": document["model"],
        "source": str(source),
        **bundle.describe(),
        "threads": rows[0].latency_threads,
        "results": results,
    }
    path = save_result(directory, "bench", payload)
    title = f"vitquant bench {document['model']} ({bundle.name} test, {rows[0].n} images)"
    save_tables(directory, "bench", results, title=title)
    _print(results, title)
    console.print(f"wrote {path} (+ .csv, .md); command: {invocation()}")
