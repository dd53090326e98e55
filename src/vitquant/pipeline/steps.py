"""The pipeline's steps, in the order ``run_pipeline`` runs them; each returns its measured rows
and its one decision (``StepResult``).

Every choice reads val figures (``row.val_accuracy``, drops against the fp32 val accuracy); test
figures are only reported. A variant's status is ``ok`` when its val drop is within
``cfg.max_drop``, else ``miss``.
"""

from __future__ import annotations

import time

from vitquant.pipeline import lowbit_steps
from vitquant.pipeline.choose import choose_final
from vitquant.pipeline.config import RANKING_BUDGET_S, ranking_method
from vitquant.pipeline.context import Context
from vitquant.pipeline.decision import Decision, StepResult
from vitquant.results import ResultRow


def significant_modules(stats, quantizable: list[str]) -> list[str]:
    """Quantizable modules owning at least one significant point, most outliers first."""
    best: dict[str, float] = {}
    for s in stats:
        if s.significant and s.module in quantizable:
            best[s.module] = max(best.get(s.module, 0.0), s.outlier_pct)
    return sorted(best, key=lambda m: -best[m])


def row_detail(ctx: Context, row: ResultRow) -> dict:
    """The figures a variant's decision and flow node show."""
    return {
        "variant": row.variant,
        "backend": row.backend,
        "val_acc": row.val_accuracy,
        "val_drop_pts": ctx.val_drop(row),
        "test_acc": row.accuracy,
        "test_drop_pts": round((ctx.fp32.accuracy - row.accuracy) * 100, 4),
        "float_layers": row.float_layers,
        "size_mb": row.size_mb,
        "latency_ms": row.latency_ms_per_image,
        "latency_spread_ms": row.latency_spread_ms,
        "simulated": row.simulated,
    }


def _variant(ctx: Context, step: str, row: ResultRow, decision: str, reason: str) -> StepResult:
    """A step that measured one variant: ``ok``/``miss`` by its val drop."""
    ok = ctx.val_drop(row) <= ctx.cfg.max_drop
    detail = row_detail(ctx, row)
    return StepResult(Decision(step, decision, reason, "ok" if ok else "miss", detail), rows=[row])


def _budget(ctx: Context, row: ResultRow) -> str:
    drop, budget = ctx.val_drop(row), ctx.cfg.max_drop
    return (
        f"val drop {drop:.2f} pts, {'within' if drop <= budget else 'over'} the {budget} pt budget"
    )


def fp32(ctx: Context) -> StepResult:
    """The float model: the reference of every drop, agreement and speedup."""
    t0 = time.perf_counter()
    row = ctx.measure_eager("fp32", "pytorch", ctx.model, int8_layers=[], float_layers=ctx.names)
    # seconds per image of a float evaluation (upper bound: includes timing and saving)
    n_images = len(ctx.bundle.val_idx) + row.n
    ctx.s_per_image = (time.perf_counter() - t0) / max(1, n_images)
    detail = {"val_acc": row.val_accuracy, "test_acc": row.accuracy}
    reason = f"val {row.val_accuracy:.4f}, test {row.accuracy:.4f}: the reference of every drop"
    return StepResult(Decision("fp32", "measured the float model", reason, "info", detail), [row])


def analysis(ctx: Context) -> StepResult:
    """Outlier statistics on ``calib``: which quantizable layers own significant points."""
    stats = ctx.analyze(ctx.out / "analyze")
    ctx.stats = stats
    sig = significant_modules(stats, ctx.names)
    n_sig = sum(s.significant for s in stats)
    ctx.significant = sig
    return StepResult(
        Decision(
            "analysis",
            f"{len(sig)} quantizable layer(s) own significant outlier points",
            f"{n_sig} of {len(stats)} observed points have more than {ctx.cfg.threshold}% "
            "values beyond the IQR fences",
            "info",
            {"points": len(stats), "significant_points": n_sig, "significant_layers": len(sig)},
        ),
        record={"significant_modules": sig},
    )


def _lowbit_variant(ctx: Context, step: str):
    """``variant_result(row, decision, reason="")`` for the low-bit steps."""

    def make(row: ResultRow, decision: str, reason: str = "") -> StepResult:
        return _variant(ctx, step, row, decision, reason or _budget(ctx, row))

    return make


def static(ctx: Context) -> StepResult:
    """Static PTQ of every layer (a low-bit target: its min-max quantization)."""
    from vitquant.quant.pt2e import quantize_static

    if ctx.cfg.lowbit is not None:
        return lowbit_steps.minmax(ctx, _lowbit_variant(ctx, "static"))
    qm = quantize_static(ctx.model, ctx.bundle, ctx.spec, ctx.static_cfg)
    ctx.static_model = qm
    row = ctx.measure_quantized("static", qm)
    return _variant(ctx, "static", row, "quantized every layer to int8", _budget(ctx, row))


def vit_methods(ctx: Context) -> StepResult:
    """The ViT-aware methods of a low-bit target (``lowbit_steps.vit_methods``)."""
    if ctx.cfg.lowbit is None:
        return StepResult(
            Decision(
                "vit-methods",
                "skipped",
                "the target is int8 of the Linear/Conv layers (real int8 kernels); the ViT-aware "
                "methods run for low-bit targets (--wbits/--abits/--quantize-attention)",
                "skip",
            )
        )
    return lowbit_steps.vit_methods(ctx, _lowbit_variant(ctx, "vit-methods"))


def static_ignore(ctx: Context) -> StepResult:
    """Static PTQ keeping the analysis's outlier layers in float."""
    from vitquant.quant.pt2e import quantize_static

    if ctx.cfg.lowbit is not None:
        return lowbit_steps.ignore_outliers(ctx, _lowbit_variant(ctx, "static-ignore"))
    sig = ctx.significant
    if not sig:
        return StepResult(
            Decision("static-ignore", "skipped", "no layer has significant outliers", "skip")
        )
    qm = quantize_static(ctx.model, ctx.bundle, ctx.spec, ctx.static_cfg, ignore=sig)
    row = ctx.measure_quantized("static-ignore", qm)
    static_row = ctx.measurer.find("static", ctx.pt2e_backend).row
    result = _variant(
        ctx,
        "static-ignore",
        row,
        f"kept {len(sig)} outlier layer(s) in float",
        f"val drop {ctx.val_drop(static_row):.2f} -> {ctx.val_drop(row):.2f} pts "
        f"(budget {ctx.cfg.max_drop} pts)",
    )
    result.record["ignored"] = sig
    return result


def static_auto(ctx: Context) -> StepResult:
    """The fewest most sensitive layers in float that bring static PTQ within the budget."""
    from vitquant.quant.auto import select_ignore, sensitivity_ranking, sqnr_ranking

    cfg = ctx.cfg
    if cfg.lowbit is not None:
        return lowbit_steps.not_for_lowbit(
            "static-auto",
            "the accuracy-aware ignore list searches the executed int8 graph; for a low-bit "
            "target keep layers at more bits with --bits rules (e.g. 'head=8/8')",
        )
    static_row = ctx.measurer.find("static", ctx.pt2e_backend).row
    if ctx.val_drop(static_row) <= cfg.max_drop:  # rank only when all-int8 misses the budget
        return StepResult(
            Decision(
                "static-auto",
                "no layer needs to stay in float",
                f"static PTQ of all layers is already within {cfg.max_drop} pts on val "
                "(the auto variant would equal 'static')",
                "skip",
            )
        )
    n_val = len(ctx.bundle.val_idx)
    n_rank = n_val if cfg.sensitivity_limit is None else min(cfg.sensitivity_limit, n_val)
    n_layers = len(ctx.names)
    method, estimate = ranking_method(
        cfg, n_layers=n_layers, n_val=n_rank, s_per_image=ctx.s_per_image
    )
    t_rank = time.perf_counter()
    rank = sensitivity_ranking if method == "sensitivity" else sqnr_ranking
    ranking = rank(ctx.model, ctx.bundle, ctx.spec, limit=cfg.sensitivity_limit)
    record = {
        "ranking_method": method,
        "ranking_seconds": round(time.perf_counter() - t_rank, 2),
        "search": cfg.search,
    }
    if cfg.ranking == "auto":
        within = "within" if estimate <= RANKING_BUDGET_S else "over"
        why = (
            f"ranked by {method}: the end-to-end sensitivity analysis would take ~{estimate:.0f} "
            f"s (2 x {n_layers} layers x {n_rank} val images), {within} the "
            f"{RANKING_BUDGET_S:.0f} s budget"
        )
    else:
        why = f"ranked by {method} (--ranking {method})"
    auto = select_ignore(
        ctx.model,
        ctx.bundle,
        ctx.spec,
        ctx.static_cfg,
        max_drop=cfg.max_drop,
        ranking=ranking,
        search=cfg.search,
        evaluate=ctx.search_val_accuracy,
        fp32_val_acc=ctx.fp32.val_accuracy,
        start=(ctx.static_model, static_row.val_accuracy),
        log=ctx.log,
    )
    record.update(steps=auto.steps, ignored=auto.ignored, met=auto.met)
    if not auto.ignored:  # an empty ranking: nothing to keep in float
        return StepResult(
            Decision("static-auto", "no layer to keep in float", f"{why}; the ranking is empty"),
            record=record,
        )
    row = ctx.measure_quantized("static-auto", auto.model, extra={"auto_steps": auto.steps})
    missed = "" if auto.met else " - budget not met even so"
    result = _variant(
        ctx,
        "static-auto",
        row,
        f"kept {len(auto.ignored)} most sensitive layer(s) in float",
        f"{why}; the fewest top-ranked layers bringing the val drop within {cfg.max_drop} pts "
        f"({cfg.search} search, {len(auto.steps)} steps){missed}",
    )
    result.record.update(record)
    return result


def dynamic(ctx: Context) -> StepResult:
    """Dynamic int8 of the Linear layers, the backend's own path (``Backend.quantize_dynamic``:
    PyTorch's eager dynamic on x86, else the quantizer's pt2e dynamic config, lowered like the
    rest)."""
    if ctx.cfg.lowbit is not None:
        return lowbit_steps.not_for_lowbit(
            "dynamic", "the target is a low-bit setting; dynamic int8 is another setting"
        )
    dq = ctx.backend.quantize_dynamic(
        ctx.model, example=ctx.example(), per_channel=ctx.cfg.per_channel
    )
    row = ctx.measure_quantized("dynamic", dq, dynamic=True)
    return _variant(
        ctx, "dynamic", row, "Linear weights int8, activations per batch", _budget(ctx, row)
    )


def qat(ctx: Context) -> StepResult:
    """QAT with an Optuna search, when the best post-training val drop misses the budget."""
    from vitquant.quant.pt2e import split_int8

    cfg = ctx.cfg
    if cfg.lowbit is not None and (why := lowbit_steps.qat_unsupported(cfg.lowbit)):
        return lowbit_steps.not_for_lowbit("qat", why)
    int8_rows = [r for r in ctx.measurer.rows if r.variant != "fp32"]
    best = min(int8_rows, key=ctx.val_drop)
    best_drop = ctx.val_drop(best)
    need = best_drop > cfg.max_drop or cfg.force_qat
    reason = (
        f"best post-training val drop {best_drop:.2f} pts "
        f"({best.variant}) vs budget {cfg.max_drop} pts"
    )
    if not cfg.qat:
        return StepResult(Decision("qat", "skipped", f"QAT skipped: --no-qat ({reason})", "skip"))
    if not need or ctx.qat_search is None:
        why = "; QAT unavailable" if need else ": post-training meets the budget"
        return StepResult(Decision("qat", "skipped", reason + why, "skip"))
    forced = " (forced)" if cfg.force_qat and best_drop <= cfg.max_drop else ""
    converted, details = ctx.qat_search()
    int8, floats = split_int8(ctx.model, converted)
    if cfg.lowbit is not None:
        row = lowbit_steps.measure_qat(ctx, converted, int8, floats, details)
    else:
        row = ctx.measure_quantized(
            "qat", converted, int8_layers=int8, float_layers=floats, ignored=[], extra=details
        )
    result = _variant(
        ctx,
        "qat",
        row,
        f"run QAT with an Optuna search ({cfg.trials} trials)",
        f"{reason}{forced}; QAT result: {_budget(ctx, row)}",
    )
    result.record.update({k: details[k] for k in ("best_params", "trials") if k in details})
    return result


def pte(ctx: Context, variant: str) -> StepResult:
    """The ExecuTorch XNNPACK twin of a pt2e variant: a candidate of the final choice."""
    row, exported = ctx.measure_pte(variant)
    return _variant(
        ctx, f"{variant} .pte", row, "lowered to ExecuTorch XNNPACK", exported.note or ""
    )


def openvino(ctx: Context, variant: str) -> StepResult:
    """The OpenVINO twin of a static variant: a candidate of the final choice (a model whose
    layers OpenVINO renames gets a skip saying so)."""
    from vitquant.errors import VitquantError

    try:
        row, exported = ctx.measure_openvino(variant)
    except VitquantError as exc:
        return StepResult(Decision(f"{variant} openvino", "skipped", str(exc), "skip"))
    model_type = exported.extra.get("config", {}).get("nncf_model_type") or "default"
    return _variant(
        ctx,
        f"{variant} openvino",
        row,
        f"quantized by NNCF ({model_type} recipe) and run by OpenVINO",
        f"{len(exported.int8_layers)} int8 layer(s), {len(exported.float_layers)} float",
    )


def final(ctx: Context) -> StepResult:
    """Fill drops and speedups, then apply the final rule (``choose.choose_final``)."""
    rows = ctx.measurer.finalize()
    choice = choose_final(rows, max_drop=ctx.cfg.max_drop)
    ctx.choice = choice
    r = choice.row
    detail = {**row_detail(ctx, r), "rule": choice.rule}
    return StepResult(
        Decision("final", f"chose {r.variant} ({r.backend})", choice.reason, "final", detail)
    )
