"""The low-bit study: basic min-max vs each ViT-aware method vs the recipe, as results rows.

``run_lowbit(model, bundle, spec, job, measurer=..., artifacts=DIR)`` quantizes the float model
at one setting (``LowBitPTQ``: W/A bits, per-layer rules, quantized attention and LayerNorm) and
measures, with the caller's ``Measurer`` (val for every choice, test for the report):

=================== ===========================================================================
variant             what
=================== ===========================================================================
``W4A4-minmax``     the baseline: min-max ranges, per-channel weights, per-tensor activations
``W4A4+rotate``     one row per method alone (``job.methods`` None: the recipe is chosen from them)
``W4A4-all``        every applicable method together (``job.all_together``)
``W4A4-vit``        the recipe: every method whose row beat min-max on val, together (the best
                    single method instead when the combination is worse on val); with
                    ``job.methods`` given, exactly those methods
``8da4w``           with ``job.int4_kernels`` and 4-bit weights: int4 weights x int8 dynamic
                    activations lowered to ExecuTorch XNNPACK's real 4-bit kernels, timed
=================== ===========================================================================

Every other row is the converted pt2e graph run eagerly: quantize/dequantize in fp32 around
float kernels, so the rows are ``simulated`` (backend ``pt2e-lowbit``) and not timed - no CPU
runtime has 4- or 6-bit activation kernels. Each row's ``extra`` carries the setting, the
methods and the seconds each method took (``method_seconds``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.measure import Candidate, Measurer
from vitquant.quant.lowbit.methods import (
    METHODS,
    ORDER,
    Applied,
    applicable,
    apply_methods,
    calibration_batches,
    why_not,
)
from vitquant.results import ResultRow

BACKEND = "pt2e-lowbit"


@dataclass(frozen=True)
class LowBitJob:
    """What ``run_lowbit`` produces.

    Attributes:
        setting: the low-bit setting (a ``LowBitPTQ``).
        methods: the ViT-aware methods of the recipe row (None: chosen on val among every
            applicable method, each measured alone first).
        all_together: with ``methods`` None, also a row with every applicable method.
        int4_kernels: also the ``8da4w`` row (4-bit weights only): real int4 kernels, timed.
        ignore: module names kept in float in every row.
    """

    setting: object
    methods: tuple[str, ...] | None = None
    all_together: bool = False
    int4_kernels: bool = False
    ignore: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "setting": self.setting.to_dict(),
            "methods": None if self.methods is None else list(self.methods),
            "all_together": self.all_together,
            "int4_kernels": self.int4_kernels,
            "ignore": list(self.ignore),
        }


@dataclass
class LowBitResult:
    """The rows of one setting and how the recipe was chosen."""

    label: str
    rows: list[ResultRow]
    recipe: tuple[str, ...]
    recipe_variant: str
    val_accuracy: dict[str, float] = field(default_factory=dict)  # variant -> val accuracy
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> method -> s
    notes: list[str] = field(default_factory=list)
    choice: str = ""

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "recipe": list(self.recipe),
            "recipe_variant": self.recipe_variant,
            "choice": self.choice,
            "val_accuracy": self.val_accuracy,
            "method_seconds": self.seconds,
            "notes": self.notes,
        }


def check_job(job: LowBitJob, model: nn.Module) -> None:
    """Refuse ``--bits`` rules matching no module and named methods that cannot apply to
    ``model`` (before anything is measured)."""
    job.setting.plan.check(n for n, _ in model.named_modules())
    if job.methods is None:
        return
    reasons = [r for n in job.methods if (r := why_not(n, job.setting, model)) is not None]
    if reasons:
        raise VitquantError("; ".join(reasons) + ": drop it from --vit-methods.")


def run_lowbit(
    model: nn.Module,
    bundle,
    spec,
    job: LowBitJob,
    *,
    measurer: Measurer,
    artifacts: Path,
    base: ResultRow | None = None,
    log: Callable[[str], None] = print,
) -> LowBitResult:
    """Measure the min-max row, the per-method rows and the recipe row of ``job.setting``.

    Args:
        model, bundle, spec: the float model, the data and the model's spec.
        job: the setting and the methods.
        measurer: measures every row (val and test); it holds the fp32 row already.
        artifacts: folder of the saved ``.pt2`` graphs.
        base: the min-max row when the caller measured it already (the pipeline's first step).
        log: progress lines.
    """
    if "val" not in measurer.roles:
        raise VitquantError("the low-bit study chooses its recipe on val: measure val too.")
    check_job(job, model)
    result = _study(model, bundle, spec, job, measurer, artifacts, base, log)
    if job.int4_kernels and job.setting.wbits == 4:
        result.rows.append(measure_8da4w(model, measurer, artifacts, job, log=log))
    return result


def _study(model, bundle, spec, job, measurer, artifacts, base, log) -> LowBitResult:
    """The min-max, per-method and recipe rows (``run_lowbit`` without the kernel row)."""
    from vitquant.quant.lowbit.ptq import bits_label

    label = bits_label(job.setting)
    calib = calibration_batches(bundle, spec, job.setting)
    result = LowBitResult(label=label, rows=[], recipe=(), recipe_variant="")

    def measure(methods: tuple[str, ...], variant: str) -> ResultRow:
        log(f"{variant}: quantizing ({', '.join(methods) or 'min-max'})")
        applied = apply_methods(
            model, bundle, spec, job.setting, methods, ignore=job.ignore, calib=calib
        )
        row = measure_applied(measurer, applied, variant, artifacts)
        result.rows.append(row)
        result.val_accuracy[variant] = row.val_accuracy
        result.seconds[variant] = {k: round(v, 3) for k, v in applied.seconds.items()}
        result.notes.extend(n for n in applied.qm.notes if n not in result.notes)
        return row

    if base is None:
        base = measure((), f"{label}-minmax")
    else:
        result.val_accuracy[base.variant] = base.val_accuracy
    if job.methods is not None:
        chosen = tuple(job.methods)
        measure(chosen, f"{label}-vit")
        result.recipe, result.recipe_variant = chosen, f"{label}-vit"
        result.choice = f"the methods asked for: {', '.join(chosen)}"
        return result

    singles: dict[str, ResultRow] = {}
    every = applicable(ORDER, job.setting, model)
    skipped = [why_not(n, job.setting, model) for n in ORDER if n not in every]
    result.notes.extend(f"not tried: {r}" for r in skipped)
    for name in every:
        singles[name] = measure((name,), f"{label}+{name}")
    together = measure(every, f"{label}-all") if job.all_together and len(every) > 1 else None
    helped = [n for n, r in singles.items() if r.val_accuracy > base.val_accuracy]
    if not helped:
        result.recipe, result.recipe_variant = (), base.variant
        result.choice = "no method beat min-max on val; the recipe is min-max"
        return result
    best = max(helped, key=lambda n: singles[n].val_accuracy)
    if len(helped) == 1:
        result.recipe, result.recipe_variant = (best,), singles[best].variant
        result.choice = f"only {best} beat min-max on val"
        return result
    if together is not None and tuple(helped) == every:
        combined = together  # the recipe is every method: measured already
    else:
        combined = measure(tuple(helped), f"{label}-vit")
    if combined.val_accuracy >= singles[best].val_accuracy:
        result.recipe, result.recipe_variant = tuple(helped), combined.variant
        result.choice = (
            f"{', '.join(helped)} each beat min-max on val; together "
            f"{combined.val_accuracy:.4f} >= {best} alone {singles[best].val_accuracy:.4f}"
        )
    else:
        result.recipe, result.recipe_variant = (best,), singles[best].variant
        result.choice = (
            f"{', '.join(helped)} each beat min-max on val but together "
            f"{combined.val_accuracy:.4f} < {best} alone {singles[best].val_accuracy:.4f}: "
            f"the recipe is {best}"
        )
    return result


def measure_simulated(
    measurer: Measurer,
    variant: str,
    module,
    path: Path,
    *,
    int8_layers: list[str],
    float_layers: list[str],
    ignored: list[str] = (),
    extra: dict | None = None,
) -> ResultRow:
    """One low-bit row: the converted graph ``module`` (saved at ``path``) measured as its eager
    emulation - backend ``pt2e-lowbit``, ``simulated``, not timed. The PTQ study, the QAT
    command and the pipeline's low-bit QAT step all report through it."""
    return measurer.measure(
        Candidate(
            variant,
            BACKEND,
            module,
            artifact=path,
            int8_layers=int8_layers,
            float_layers=float_layers,
            ignored=list(ignored),
            simulated=True,
            timed=False,
            extra=dict(extra or {}),
        )
    )


def measure_applied(
    measurer: Measurer, applied: Applied, variant: str, artifacts: Path
) -> ResultRow:
    """Save the converted graph (``.pt2``) and measure its eager emulation (``simulated``)."""
    from vitquant.quant.artifacts import save_pt2e

    qm = applied.qm
    path = save_pt2e(qm.module, qm.example, Path(artifacts) / f"{variant}.pt2")
    return measure_simulated(
        measurer,
        variant,
        qm.module,
        path,
        int8_layers=qm.int8_layers,
        float_layers=qm.float_layers,
        ignored=qm.ignored,
        extra={
            "config": qm.config.to_dict(),
            "methods": list(applied.methods),
            "method_seconds": {k: round(v, 3) for k, v in applied.seconds.items()},
            "int8": list(qm.int8_layers),
            "float": list(qm.float_layers),
        },
    )


def measure_8da4w(model, measurer: Measurer, artifacts: Path, job: LowBitJob, *, log) -> ResultRow:
    """int4 weights (group 32, round to nearest) x int8 dynamic activations on every Linear,
    lowered to an ExecuTorch XNNPACK ``.pte`` and measured - and timed - in its runtime."""
    from vitquant.layers import quantizable_names
    from vitquant.quant.lowbit.intx import load_8da4w, lower_8da4w, quantize_8da4w

    log("8da4w: int4 weights x int8 dynamic activations, lowering to ExecuTorch XNNPACK")
    q = quantize_8da4w(model, ignore=job.ignore)
    example = next(iter(measurer.examples.values()), None)
    if example is None:
        example = torch.zeros(2, *measurer.spec.input_size)
    exported = lower_8da4w(q, example, Path(artifacts) / "8da4w.pte", max_batch=32)
    return measurer.measure(
        Candidate(
            "8da4w",
            "executorch-xnnpack",
            load_8da4w(exported.path, threads=measurer.threads),
            runtime="executorch",
            artifact=exported.path,
            int8_layers=exported.int4_layers,  # int4 weights x int8 activations, real kernels
            float_layers=[n for n in quantizable_names(model) if n not in exported.int4_layers],
            extra={
                "methods": [],
                "config": {"weights": "int4, group 32", "activations": "int8 dynamic per token"},
            },
        )
    )


def describe_methods() -> list[dict]:
    """``[{name, kind, description}]`` of every ViT-aware method, for --help and reports."""
    return [
        {"name": m.name, "kind": m.kind, "description": m.description} for m in METHODS.values()
    ]
