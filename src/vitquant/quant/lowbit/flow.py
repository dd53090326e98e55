"""The low-bit run as one call: fp32 row, the study's rows, and the per-point error analysis.

``lowbit_run(model, bundle, spec, job, artifacts=DIR)`` is what ``vitquant quantize --wbits 4
--abits 4 ...`` calls. It returns a ``LowBitRun`` whose ``payload()`` is the JSON the command
writes: the results rows (fp32 and ``vitquant.quant.lowbit.study``'s), how the recipe was chosen,
and for the min-max setting and the recipe's quantizers the per-point error table
(``vitquant.analysis.point_error``) with the rank correlation between each point's IQR outlier
percentage and its error / accuracy impact. Only fp32 and the real-kernel ``8da4w`` row are
timed: an emulated low-bit graph's latency says nothing about a deployed kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from vitquant.measure import Candidate, Measurer
from vitquant.quant.lowbit.study import LowBitJob, LowBitResult, check_job, run_lowbit
from vitquant.results import ResultRow, ScoreWeights


@dataclass(frozen=True)
class PointErrorJob:
    """The per-point error analysis of a low-bit run.

    Attributes:
        enabled: run it.
        val_images: val images the SQNR is measured on.
        impact_images: val images of the per-point accuracy impact (0: not measured; one
            forward pass over them per point).
        stats_images: calibration images of the outlier statistics beside each point.
    """

    enabled: bool = True
    val_images: int = 256
    impact_images: int = 256
    stats_images: int = 256


@dataclass
class LowBitRun:
    """A low-bit run's rows, study and per-point errors."""

    rows: list[ResultRow]
    study: LowBitResult
    point_errors: dict = field(default_factory=dict)  # setting name -> {table, correlation}
    threads: int | None = None

    def payload(self) -> dict:
        return {
            "threads": self.threads,
            "lowbit": self.study.to_dict(),
            "point_errors": self.point_errors,
            "results": [r.to_dict() for r in self.rows],
            "notes": self.study.notes,
        }


def lowbit_run(
    model: nn.Module,
    bundle,
    spec,
    job: LowBitJob,
    *,
    artifacts: Path,
    errors: PointErrorJob = PointErrorJob(),
    threads: int | None = None,
    weights: ScoreWeights = ScoreWeights(),
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> LowBitRun:
    """fp32 row -> min-max/method/recipe rows -> per-point errors; rows finalized (drops...)."""
    from vitquant.layers import quantizable_names
    from vitquant.quant.artifacts import save_state_dict

    check_job(job, model)
    artifacts = Path(artifacts)
    measurer = Measurer(
        bundle,
        spec,
        roles=("val", "test"),
        latency_batches=(1, 32),  # fp32 and the 8da4w kernels; emulated rows are not timed
        threads=threads,
        progress=progress,
        log=log,
    )
    path = save_state_dict(model, artifacts / "fp32.pt")
    measurer.measure(
        Candidate(
            "fp32", "pytorch", model.eval(), artifact=path, float_layers=quantizable_names(model)
        )
    )
    study = run_lowbit(model, bundle, spec, job, measurer=measurer, artifacts=artifacts, log=log)
    run = LowBitRun(rows=measurer.finalize(weights), study=study, threads=measurer.threads)
    if errors.enabled:
        run.point_errors = point_error_tables(
            model, bundle, spec, job, errors, recipe=study.recipe, log=log
        )
    return run


def point_error_tables(
    model, bundle, spec, job: LowBitJob, errors: PointErrorJob, *, recipe=(), stats=None, log=print
) -> dict:
    """The per-point error table of the min-max setting and, when the ``recipe`` changes the
    softmax/GELU quantizers, of the recipe's quantizers too.

    Args:
        stats: the ``PointStats`` of an analysis already run on ``model`` (None: computed here
            on ``errors.stats_images`` calibration images).
    """
    from vitquant.analysis.hooks import observation_points
    from vitquant.analysis.point_error import (
        PointSetting,
        point_errors,
        rank_correlations,
    )
    from vitquant.analysis.stats import collect_activation_stats

    setting = job.setting
    plan = setting.plan
    if stats is None:
        log("per-point errors: outlier statistics on calib")
        stats = collect_activation_stats(
            model, bundle, spec, role="calib", limit=errors.stats_images, progress=False
        )
    by_point = {s.point: s for s in stats}
    example = next(bundle.batches("calib", spec, batch_size=2))[0]
    points = observation_points(model, example, family=spec.family)

    def images(role: str, limit: int):
        return lambda: bundle.batches(role, spec, batch_size=64, limit=limit)

    settings = {"minmax": PointSetting(
        abits=lambda name: plan.for_module(name).abits,
        quantize_attention=setting.quantize_attention,
        ignore=frozenset(job.ignore),
    )}  # fmt: skip
    recipe = set(recipe)
    if recipe & {"log2-softmax", "twin-gelu"}:
        settings["recipe quantizers"] = PointSetting(
            abits=settings["minmax"].abits,
            quantize_attention=setting.quantize_attention,
            softmax="log2-sqrt2" if "log2-softmax" in recipe else "uniform",
            gelu="twin" if "twin-gelu" in recipe else "uniform",
            ignore=frozenset(job.ignore),
        )
    out = {}
    for name, ps in settings.items():
        impact = ", accuracy impact" if errors.impact_images else ""
        log(f"per-point errors ({name}): SQNR on val{impact}")
        table = point_errors(
            model,
            points,
            ps,
            calib=lambda: (x for x, _ in bundle.batches("calib", spec, batch_size=64)),
            val=images("val", errors.val_images),
            impact=images("val", errors.impact_images) if errors.impact_images else None,
            stats=by_point,
        )
        out[name] = {
            "points": [e.to_dict() for e in table],
            "correlation": rank_correlations(table),
            "val_images": errors.val_images,
            "impact_images": errors.impact_images,
        }
    return out
