"""``run_pipeline``: the steps in order, each recorded with its rows, decision and seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vitquant.data import DataBundle
from vitquant.measure import Measurer
from vitquant.pipeline import steps
from vitquant.pipeline.choose import Choice, val_drop_pts
from vitquant.pipeline.config import PipelineConfig
from vitquant.pipeline.context import Context
from vitquant.pipeline.decision import Decision, StepResult
from vitquant.pipeline.flow import flow_nodes
from vitquant.results import ResultRow, fp32_reference

# The flow, in order. With ``export="pte"`` each pt2e variant's ``.pte`` twin is measured as
# its own step right after the step that made it.
STEPS: tuple[Callable[[Context], StepResult], ...] = (
    steps.fp32,
    steps.analysis,
    steps.static,
    steps.vit_methods,
    steps.static_ignore,
    steps.static_auto,
    steps.dynamic,
    steps.qat,
    steps.final,
)


@dataclass
class PipelineRun:
    """What a run measured and decided.

    Attributes:
        config: the recipe.
        results: one ``StepResult`` per step run, in order (``.pte`` twins after their step).
        rows: every results row, finalized (drops, speedups, score), in measurement order.
        choice: the final choice.
    """

    config: PipelineConfig
    results: list[StepResult] = field(default_factory=list)
    rows: list[ResultRow] = field(default_factory=list)
    choice: Choice | None = None

    @property
    def decisions(self) -> list[Decision]:
        return [r.decision for r in self.results]

    @property
    def flow(self) -> list[dict]:
        """The flow diagram's nodes, one per decision."""
        return flow_nodes(self.decisions)

    @property
    def final(self) -> ResultRow | None:
        return self.choice.row if self.choice else None

    @property
    def final_reason(self) -> str:
        return self.choice.reason if self.choice else ""

    def val_drop(self, row: ResultRow) -> float:
        """``row``'s val drop in points against the fp32 row (what every choice used)."""
        return val_drop_pts(row, fp32_reference(self.rows))

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "steps": [r.step_entry() for r in self.results],
            "decisions": [d.to_dict() for d in self.decisions],
            "results": [r.to_dict() for r in self.rows],
            "val": [
                {
                    "variant": r.variant,
                    "backend": r.backend,
                    "val_accuracy": r.val_accuracy,
                    "val_drop_pts": self.val_drop(r),
                }
                for r in self.rows
            ],
            "final": self.final.to_dict() if self.final else None,
            "final_reason": self.final_reason,
            "final_rule": self.choice.rule if self.choice else None,
            "flow": self.flow,
        }


def run_pipeline(
    model,
    spec,
    bundle: DataBundle,
    cfg: PipelineConfig,
    *,
    out: Path,
    analyze: Callable[[Path], list],
    qat_search: Callable[[], tuple[object, dict]] | None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> PipelineRun:
    """Run ``STEPS`` on ``model``; every row is measured on val (choices) and test (reports).

    Args:
        model, spec, bundle: the float model, its ``ModelSpec`` and the data.
        cfg: the pipeline recipe.
        out: the run folder (``artifacts/``, ``analyze/`` and ``qat/`` go below it).
        analyze: ``analyze(out_dir) -> list[PointStats]`` - the activation analysis (it writes
            its own plots and JSON).
        qat_search: ``qat_search() -> (converted_module, details)`` - the QAT branch.
        threads: intra-op threads for every measurement (None: all cores).
        log: progress lines.
    """
    measurer = Measurer(
        bundle,
        spec,
        roles=("val", "test"),
        latency_batches=(1, 32),
        latency_batch=1,
        threads=threads,
        progress=True,
        log=log,
    )
    ctx = Context(
        model=model,
        spec=spec,
        bundle=bundle,
        cfg=cfg,
        out=Path(out),
        measurer=measurer,
        analyze=analyze,
        qat_search=qat_search,
        log=log,
    )
    run = PipelineRun(config=cfg)
    for step in STEPS:
        run.results.append(_timed(step.__name__.replace("_", "-"), lambda s=step: s(ctx), log))
        for variant in list(ctx.pending_pte):
            run.results.append(_timed(f"{variant} .pte", lambda v=variant: steps.pte(ctx, v), log))
        for variant in list(ctx.pending_ov):
            run.results.append(
                _timed(f"{variant} openvino", lambda v=variant: steps.openvino(ctx, v), log)
            )
    run.rows, run.choice = measurer.rows, ctx.choice
    return run


def _timed(name: str, step: Callable[[], StepResult], log: Callable[[str], None]) -> StepResult:
    log(f"pipeline step: {name}")  # no [brackets]: rich would read them as markup
    t0 = time.perf_counter()
    result = step()
    result.seconds = time.perf_counter() - t0
    return result
