"""The pipeline's steps for a low-bit target (``PipelineConfig.lowbit``): min-max, then the
ViT-aware methods, then the outlier ignore list on top of them, then QAT at the target's bits.
Every row is the eager emulation of the low-bit graph (``simulated``): no CPU runtime executes
4- or 6-bit activations.
"""

from __future__ import annotations

from vitquant.pipeline.context import Context
from vitquant.pipeline.decision import Decision, StepResult


def _label(ctx: Context) -> str:
    from vitquant.quant.lowbit.ptq import bits_label

    return bits_label(ctx.cfg.lowbit)


def _measure(ctx: Context, variant: str, methods=(), ignore=()):
    from vitquant.quant.lowbit.methods import apply_methods
    from vitquant.quant.lowbit.study import measure_applied

    applied = apply_methods(
        ctx.model, ctx.bundle, ctx.spec, ctx.cfg.lowbit, methods, ignore=list(ignore)
    )
    return measure_applied(ctx.measurer, applied, variant, ctx.artifacts)


def minmax(ctx: Context, variant_result) -> StepResult:
    """The target setting with plain min-max ranges: the loss to explain and win back, and
    where it comes from (the per-point error table and its correlation with the outliers)."""
    from vitquant.quant.lowbit.flow import PointErrorJob, point_error_tables
    from vitquant.quant.lowbit.study import LowBitJob

    label = _label(ctx)
    row = _measure(ctx, f"{label}-minmax")
    ctx.lowbit_best = row
    result = variant_result(
        row, f"quantized every layer at {label} with min-max ranges (simulated)"
    )
    n_val = min(256, len(ctx.bundle.val_idx))
    errors = PointErrorJob(val_images=n_val, impact_images=min(128, n_val))
    result.record["point_errors"] = point_error_tables(
        ctx.model, ctx.bundle, ctx.spec, LowBitJob(setting=ctx.cfg.lowbit), errors,
        stats=ctx.stats, log=ctx.log,
    )  # fmt: skip
    return result


def vit_methods(ctx: Context, variant_result) -> StepResult:
    """The ViT-aware methods, when min-max misses the budget (before ignore lists and QAT)."""
    from vitquant.quant.lowbit.study import BACKEND, LowBitJob, run_lowbit

    cfg = ctx.cfg
    base = ctx.lowbit_best
    if ctx.val_drop(base) <= cfg.max_drop:
        return StepResult(
            Decision(
                "vit-methods",
                "skipped",
                f"min-max {_label(ctx)} is within {cfg.max_drop} pts on val "
                f"(drop {ctx.val_drop(base):.2f} pts)",
                "skip",
            )
        )
    study = run_lowbit(
        ctx.model,
        ctx.bundle,
        ctx.spec,
        LowBitJob(setting=cfg.lowbit, methods=cfg.vit_methods),
        measurer=ctx.measurer,
        artifacts=ctx.artifacts,
        base=base,
        log=ctx.log,
    )
    ctx.lowbit_recipe = study.recipe
    row = ctx.measurer.find(study.recipe_variant, BACKEND).row
    if ctx.val_drop(row) < ctx.val_drop(ctx.lowbit_best):
        ctx.lowbit_best = row
    tried = [v for v in study.val_accuracy if v != base.variant]
    result = variant_result(
        row,
        f"recipe: {', '.join(study.recipe) or 'min-max'} ({len(tried)} variant(s) tried on val)",
        f"{study.choice}; val drop {ctx.val_drop(base):.2f} -> {ctx.val_drop(row):.2f} pts "
        f"(budget {cfg.max_drop} pts)",
    )
    result.record.update(study.to_dict())
    return result


def ignore_outliers(ctx: Context, variant_result) -> StepResult:
    """The recipe with the analysis's outlier layers kept in float, if still over budget."""
    best = ctx.lowbit_best
    if ctx.val_drop(best) <= ctx.cfg.max_drop:
        return StepResult(
            Decision(
                "static-ignore",
                "skipped",
                f"{best.variant} is within {ctx.cfg.max_drop} pts on val "
                f"(drop {ctx.val_drop(best):.2f} pts)",
                "skip",
            )
        )
    if not ctx.significant:
        return StepResult(
            Decision("static-ignore", "skipped", "no layer has significant outliers", "skip")
        )
    label = _label(ctx)
    row = _measure(ctx, f"{label}-vit-ignore", ctx.lowbit_recipe, ctx.significant)
    if ctx.val_drop(row) < ctx.val_drop(best):
        ctx.lowbit_best = row
    result = variant_result(
        row,
        f"kept {len(ctx.significant)} outlier layer(s) in float on top of the recipe",
        f"val drop {ctx.val_drop(best):.2f} -> {ctx.val_drop(row):.2f} pts",
    )
    result.record["ignored"] = list(ctx.significant)
    return result


def not_for_lowbit(step: str, why: str) -> StepResult:
    """A step the low-bit target skips, with the reason recorded."""
    return StepResult(Decision(step, "skipped", why, "skip"))


def qat_unsupported(lowbit) -> str:
    """Why QAT cannot train the low-bit target ``lowbit`` (empty: it can).

    QAT narrows the backend quantizer's fake-quant ranges (``lowbit.narrow``): uniform
    per-tensor activations and per-channel weights of the Linear/Conv layers. A target that
    also quantizes attention or LayerNorm, or uses another activation quantizer, is a setting
    QAT does not train.
    """
    extras = [
        flag
        for flag, on in (
            ("--quantize-attention", lowbit.quantize_attention),
            ("--quantize-layernorm", lowbit.quantize_layernorm),
            (f"softmax={lowbit.softmax}", lowbit.softmax != "uniform"),
            (f"gelu={lowbit.gelu}", lowbit.gelu != "uniform"),
        )
        if on
    ]
    if not extras:
        return ""
    return (
        f"QAT trains the Linear/Conv layers at the target's bits with uniform fake quantizers; "
        f"the target also has {', '.join(extras)}, which QAT does not train - the low-bit target "
        "ends with its best post-training row"
    )


def measure_qat(ctx: Context, converted, int8: list[str], floats: list[str], details: dict):
    """The QAT row of a low-bit target: its converted graph's eager emulation (simulated)."""
    from vitquant.quant.artifacts import save_pt2e
    from vitquant.quant.lowbit.study import measure_simulated

    path = save_pt2e(converted, ctx.example(), ctx.artifacts / f"{_label(ctx)}-qat.pt2")
    return measure_simulated(
        ctx.measurer, "qat", converted, path, int8_layers=int8, float_layers=floats, extra=details
    )
