"""The whole study as one flow, recording every figure and the reason for every decision.

float evaluation -> analysis (outliers, change scores) -> static PTQ of all layers -> static PTQ
keeping the significant outlier layers in float -> accuracy-aware ignore list -> dynamic int8
(PyTorch's eager dynamic for x86; the quantizer's pt2e dynamic config for xnnpack) ->
(if the best post-training val drop is still above ``max_drop``) QAT with an Optuna search ->
final choice.

Every choice uses the ``val`` role (train images never trained or calibrated on); the ``test``
role only provides the reported figures. The final choice follows one rule (``choose_final``):
among the variants whose *val* drop is within ``max_drop``, the fastest measured one (ties: the
smallest); if none is within budget, the most accurate on val.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vitquant.data import DataBundle
from vitquant.evaluate import accuracy, count_layers, example_batch, file_size_mb
from vitquant.pipeline_measure import lowered_runner, measure_variant
from vitquant.results import ResultRow, finalize


@dataclass(frozen=True)
class PipelineConfig:
    """One run of the pipeline.

    Attributes:
        max_drop: accuracy budget in points (fp32 val accuracy minus int8 val accuracy).
        threshold: outlier % above which an observed point is significant.
        stats_images: calibration images used for the activation statistics.
        per_channel: per-channel weight scales for static PTQ.
        observer: activation observer for static PTQ (see ``StaticPTQ``; None: the
            quantizer's default).
        backend: pt2e quantizer, ``x86`` or ``xnnpack``.
        export: ``pte``: every pt2e variant is also lowered to an ExecuTorch XNNPACK program,
            measured (val and test) and offered to the final choice as its own candidate
            (backend ``executorch-xnnpack``); needs ``backend == "xnnpack"``.
        trials: Optuna trials of the QAT search when post-training misses the budget.
        qat_epochs: epochs per QAT trial.
        qat_train_limit: training images per QAT epoch (None: all fit images).
        force_qat: run the QAT branch even when post-training meets the budget.
        sensitivity_limit: val images for the per-layer ranking (None: all val).
        ranking: how layers are ranked for the accuracy-aware ignore list: ``sensitivity`` (the
            end-to-end analysis, two val evaluations per layer), ``sqnr`` (each layer's own W8A8
            output SQNR, one pass) or ``auto`` (``sensitivity`` when it is estimated to take at
            most ``RANKING_BUDGET_S`` seconds from the fp32 step's speed, else ``sqnr``).
        search: ``bisect`` (binary search on the number of float layers, ~log2(layers) steps)
            or ``linear`` (one more layer per step).
        lower: time pt2e variants after inductor lowering (else the eager emulation is timed
            and the rows say ``simulated``).
        qat: False skips the QAT branch whatever the drop (``--no-qat``); the skip is recorded.
    """

    max_drop: float = 1.0
    threshold: float = 5.0
    stats_images: int = 256
    per_channel: bool = True
    observer: str | None = None
    backend: str = "x86"
    export: str = "none"
    trials: int = 4
    qat_epochs: int = 2
    qat_train_limit: int | None = None
    force_qat: bool = False
    sensitivity_limit: int | None = None
    lower: bool = True
    ranking: str = "auto"
    search: str = "bisect"
    qat: bool = True

    def __post_init__(self) -> None:
        from vitquant.errors import VitquantError
        from vitquant.quant.configs import check_backend, check_export

        check_export(self.export, check_backend(self.backend))
        if self.ranking not in ("auto", "sensitivity", "sqnr"):
            raise VitquantError(f"ranking {self.ranking!r}: use auto, sensitivity or sqnr.")
        if self.search not in ("bisect", "linear"):
            raise VitquantError(f"search {self.search!r}: use bisect or linear.")


# The end-to-end sensitivity ranking is used when its estimated cost is at most this.
RANKING_BUDGET_S = 120.0


def ranking_method(cfg: PipelineConfig, *, n_layers: int, n_val: int, s_per_image: float):
    """``(method, estimated seconds of the sensitivity analysis)`` for the ignore-list search."""
    estimate = 2 * n_layers * n_val * s_per_image
    if cfg.ranking != "auto":
        return cfg.ranking, estimate
    return ("sensitivity" if estimate <= RANKING_BUDGET_S else "sqnr"), estimate


@dataclass
class Variant:
    """A candidate model: its results row plus the validation accuracy the choices use."""

    row: ResultRow
    val_acc: float
    val_drop_pts: float
    module: object = field(default=None, repr=False)


@dataclass
class PipelineRun:
    config: PipelineConfig
    steps: list[dict] = field(default_factory=list)  # one per step: name, figures, seconds
    decisions: list[dict] = field(default_factory=list)  # step, decision, reason
    variants: list[Variant] = field(default_factory=list)
    final: Variant | None = None
    final_reason: str = ""
    flow: list[dict] = field(default_factory=list)  # nodes of the flow diagram

    def decide(self, step: str, decision: str, reason: str) -> None:
        self.decisions.append({"step": step, "decision": decision, "reason": reason})

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "steps": self.steps,
            "decisions": self.decisions,
            "results": [v.row.to_dict() for v in self.variants],
            "val": {
                v.row.variant: {"val_acc": v.val_acc, "val_drop_pts": v.val_drop_pts}
                for v in self.variants
            },
            "final": self.final.row.to_dict() if self.final else None,
            "final_reason": self.final_reason,
            "flow": self.flow,
        }


def choose_final(variants: list[Variant], max_drop: float) -> tuple[Variant, str]:
    """The documented rule: fastest within the val budget (ties: smallest), else most accurate."""
    quantized = [v for v in variants if v.row.variant != "fp32"]
    within = [v for v in quantized if v.val_drop_pts <= max_drop]
    if within:
        best = min(
            within,
            key=lambda v: (v.row.latency_ms_per_image or float("inf"), v.row.size_mb),
        )
        return best, (
            f"{len(within)} int8 variant(s) within the {max_drop} pt val budget; "
            f"{best.row.variant} ({best.row.backend}) is the fastest of them "
            f"({best.row.latency_ms_per_image:.3f} ms/img, {best.row.size_mb:.2f} MiB)."
        )
    best = max(quantized, key=lambda v: v.val_acc)
    return best, (
        f"no int8 variant is within the {max_drop} pt val budget; {best.row.variant} "
        f"({best.row.backend}) is the "
        f"most accurate on val (drop {best.val_drop_pts:.2f} pts)."
    )


def significant_modules(stats, quantizable: list[str]) -> list[str]:
    """Quantizable modules owning at least one significant point, most outliers first."""
    best: dict[str, float] = {}
    for s in stats:
        if s.significant and s.module in quantizable:
            best[s.module] = max(best.get(s.module, 0.0), s.outlier_pct)
    return sorted(best, key=lambda m: -best[m])


def pte_variant(
    v: Variant, bundle: DataBundle, spec, artifacts: Path, examples: dict, *, fp32_val: float
) -> Variant:
    """Lower a pt2e variant to an XNNPACK ``.pte``, run it with ExecuTorch, measure val and test.

    The new candidate keeps the variant name, with backend ``executorch-xnnpack``; its latency
    is the program's (real XNNPACK int8 kernels).
    """
    from vitquant.quant.artifacts import measure_latency
    from vitquant.quant.executorch_backend import BACKEND, PteModel, export_pte
    from vitquant.quant.pt2e import QuantizedModel

    module = v.module
    graph = module.module if isinstance(module, QuantizedModel) else module
    example = module.example if isinstance(module, QuantizedModel) else examples[32][:8]
    exported = export_pte(graph, example, artifacts / f"{v.row.variant}.pte")
    runner = PteModel(exported.path, threads=torch.get_num_threads())
    val = accuracy(runner, bundle, "val", spec)
    test = accuracy(runner, bundle, "test", spec, progress=f"test {v.row.variant} .pte")
    lat = measure_latency(runner, examples)
    row = ResultRow(
        variant=v.row.variant,
        backend=BACKEND,
        accuracy=test,
        n=v.row.n,
        int8_layers=v.row.int8_layers,
        float_layers=v.row.float_layers,
        ignored=v.row.ignored,
        size_mb=file_size_mb(exported.path),
        artifact=str(exported.path),
        latency_ms_per_image=lat[1],
        latency_batch=1,
        latency_threads=runner.threads,
        extra={
            "val_acc": val,
            "latency_ms_per_image_batch32": lat[32],
            "vs_pytorch_pts": round((test - v.row.accuracy) * 100, 4),
            "lowering": exported.to_dict(),
            "lowering_note": exported.note(),
        },
    )
    return Variant(row=row, val_acc=val, val_drop_pts=(fp32_val - val) * 100, module=runner)


def _timed(run: PipelineRun, name: str, log: Callable[[str], None]):
    class _Step:
        def __enter__(self):
            log(f"[pipeline] {name}")
            self.t0 = time.perf_counter()
            self.record = {"step": name}
            return self.record

        def __exit__(self, *exc):
            self.record["seconds"] = round(time.perf_counter() - self.t0, 2)
            run.steps.append(self.record)
            return False

    return _Step()


def run_pipeline(
    model,
    spec,
    bundle: DataBundle,
    cfg: PipelineConfig,
    *,
    out: Path,
    analyze: Callable[[Path], list],
    qat_search: Callable[[], tuple[object, dict]] | None,
    log: Callable[[str], None] = print,
) -> PipelineRun:
    """Run the flow on ``model``; see the module docstring.

    Args:
        model, spec, bundle: the float model, its ``ModelSpec`` and the data.
        cfg: the pipeline recipe.
        out: the run folder (artifacts and the analysis go below it).
        analyze: ``analyze(out_dir) -> list[PointStats]`` - the activation analysis (it writes
            its own plots and JSON).
        qat_search: ``qat_search() -> (converted_module, details)`` - the QAT branch.
    """
    from vitquant.layers import quantizable_names
    from vitquant.quant.auto import select_ignore, sensitivity_ranking, sqnr_ranking
    from vitquant.quant.configs import DynamicPTQ, StaticPTQ
    from vitquant.quant.dynamic import quantize_dynamic, quantize_dynamic_pt2e
    from vitquant.quant.lowered import inductor_lowers
    from vitquant.quant.pt2e import (
        quantize_static,
        split_int8,
    )

    run = PipelineRun(config=cfg)
    examples = {b: example_batch(bundle, spec, b) for b in (1, 32)}
    n_layers = count_layers(model)
    names = quantizable_names(model)
    static_cfg = StaticPTQ(backend=cfg.backend, per_channel=cfg.per_channel, observer=cfg.observer)

    lowers = cfg.lower and inductor_lowers(cfg.backend)

    def add(variant: str, backend: str, module, *, ignored=(), int8=None, extra=None) -> Variant:
        extra = dict(extra or {})
        runner, lowered = module, None
        if lowers and backend.startswith("pt2e"):
            # Val and test on the compiled int8 model: what is deployed and timed, ~10x faster
            # than the eager emulation at 224 px.
            lowered, agree = lowered_runner(module, examples, log)
            if lowered is not None:
                runner = lowered
                extra.update(
                    accuracy_on="inductor-lowered int8 kernels", lowered_vs_eager_agreement=agree
                )
        val = accuracy(runner, bundle, "val", spec)
        test = accuracy(runner, bundle, "test", spec, progress=f"test {variant}")
        measured = measure_variant(
            variant, module, out / "artifacts", examples, lower=lowers, lowered=lowered
        )
        if lowered is not None:
            torch._dynamo.reset()
        lat32 = measured.pop("batch32")
        int8_layers = n_layers - len(ignored) if int8 is None else int8
        row = ResultRow(
            variant=variant,
            backend=backend,
            accuracy=test,
            n=len(bundle.test_idx),
            int8_layers=int8_layers,
            float_layers=n_layers - int8_layers,
            ignored=list(ignored),
            extra={"val_acc": val, "latency_ms_per_image_batch32": lat32, **extra},
            **measured,
        )
        fp32_val = run.variants[0].val_acc if run.variants else val
        v = Variant(row=row, val_acc=val, val_drop_pts=(fp32_val - val) * 100, module=module)
        run.variants.append(v)
        if cfg.export == "pte" and backend.startswith("pt2e"):
            run.variants.append(
                pte_variant(v, bundle, spec, out / "artifacts", examples, fp32_val=fp32_val)
            )
            run.decide(
                f"{variant} .pte",
                "lowered to ExecuTorch XNNPACK",
                run.variants[-1].row.extra["lowering_note"],
            )
        return v

    with _timed(run, "fp32", log) as rec:
        t0 = time.perf_counter()
        fp32 = add("fp32", "pytorch", model, int8=0)
        # seconds per image of a float evaluation (upper bound: includes timing and saving)
        s_per_image = (time.perf_counter() - t0) / max(1, len(bundle.val_idx) + fp32.row.n)
        rec.update(val_acc=fp32.val_acc, test_acc=fp32.row.accuracy)
    detail = f"val {fp32.val_acc:.4f} | test {fp32.row.accuracy:.4f}"
    run.flow.append({"label": "fp32", "status": "info", "detail": detail})

    with _timed(run, "analysis", log) as rec:
        stats = analyze(out / "analyze")
        sig = significant_modules(stats, names)
        n_sig_points = sum(s.significant for s in stats)
        rec.update(points=len(stats), significant_points=n_sig_points, significant_modules=sig)
    run.decide(
        "analysis",
        f"{len(sig)} quantizable layer(s) own significant outlier points",
        f"{n_sig_points} of {len(stats)} observed points have more than "
        f"{cfg.threshold}% values beyond the IQR fences",
    )
    run.flow.append(
        {
            "label": "outlier analysis",
            "status": "info",
            "detail": f"{n_sig_points}/{len(stats)} points > {cfg.threshold}% outliers "
            f"-> {len(sig)} layers",
        }
    )

    def ptq_node(v: Variant, label: str) -> None:
        ok = v.val_drop_pts <= cfg.max_drop
        test_drop = (fp32.row.accuracy - v.row.accuracy) * 100
        detail = (
            f"val drop {v.val_drop_pts:.2f} pts | test {v.row.accuracy:.4f} "
            f"(drop {test_drop:.2f} pts) | {v.row.float_layers} float layers | "
            f"{v.row.size_mb:.2f} MiB | {v.row.latency_ms_per_image:.2f} ms/img"
        )
        run.flow.append({"label": label, "status": "ok" if ok else "miss", "detail": detail})

    with _timed(run, "static", log) as rec:
        qm = quantize_static(model, bundle, spec, static_cfg)
        st = add("static", f"pt2e-{cfg.backend}", qm, int8=len(qm.int8_layers))
        rec.update(val_drop_pts=st.val_drop_pts)
    ptq_node(st, "static PTQ, all layers")

    with _timed(run, "static-ignore", log) as rec:
        if sig:
            qm = quantize_static(model, bundle, spec, static_cfg, ignore=sig)
            si = add(
                "static-ignore",
                f"pt2e-{cfg.backend}",
                qm,
                ignored=qm.ignored,
                int8=len(qm.int8_layers),
            )
            rec.update(val_drop_pts=si.val_drop_pts, ignored=sig)
            ptq_node(si, f"static PTQ, {len(sig)} outlier layers in float")
            run.decide(
                "static-ignore",
                f"kept {len(sig)} outlier layer(s) in float",
                f"val drop {st.val_drop_pts:.2f} -> {si.val_drop_pts:.2f} pts",
            )
        else:
            run.decide("static-ignore", "skipped", "no layer has significant outliers")
            run.flow.append(
                {
                    "label": "static PTQ ignoring outlier layers",
                    "status": "skip",
                    "detail": "skipped: no significant layer",
                }
            )

    def lowered_val(qm) -> float:
        """Val accuracy of a search step, on the inductor-lowered model when x86 lowers."""
        if lowers:
            from vitquant.quant.lowered import LoweredModel

            try:
                acc = accuracy(LoweredModel(qm), bundle, "val", spec)
                torch._dynamo.reset()
                return acc
            except Exception:  # no compiler, unsupported pattern: the emulation below
                torch._dynamo.reset()
        return accuracy(qm.module, bundle, "val", spec)

    with _timed(run, "static-auto", log) as rec:
        ranking = []
        if st.val_drop_pts > cfg.max_drop:  # rank only when all-int8 misses the budget
            n_rank = (
                len(bundle.val_idx)
                if cfg.sensitivity_limit is None
                else min(cfg.sensitivity_limit, len(bundle.val_idx))
            )
            method, estimate = ranking_method(
                cfg, n_layers=n_layers, n_val=n_rank, s_per_image=s_per_image
            )
            t_rank = time.perf_counter()
            if method == "sensitivity":
                ranking = sensitivity_ranking(model, bundle, spec, limit=cfg.sensitivity_limit)
            else:
                ranking = sqnr_ranking(model, bundle, spec, limit=cfg.sensitivity_limit)
            rec.update(
                ranking_method=method, ranking_seconds=round(time.perf_counter() - t_rank, 2)
            )
            run.decide(
                "static-auto",
                f"ranked layers by {method}",
                f"the end-to-end sensitivity analysis would take ~{estimate:.0f} s "
                f"(2 x {n_layers} layers x {n_rank} val images); "
                + ("within" if estimate <= RANKING_BUDGET_S else "over")
                + f" the {RANKING_BUDGET_S:.0f} s budget"
                if cfg.ranking == "auto"
                else f"--ranking {method}",
            )
        auto = select_ignore(
            model,
            bundle,
            spec,
            static_cfg,
            max_drop=cfg.max_drop,
            ranking=ranking,
            search=cfg.search,
            evaluate=lowered_val,
            fp32_val_acc=fp32.val_acc,
            start=(st.module, st.val_acc),
            log=log,
        )
        rec.update(steps=auto.steps, ignored=auto.ignored, met=auto.met, search=cfg.search)
        if auto.ignored:
            sa = add(
                "static-auto",
                f"pt2e-{cfg.backend}",
                auto.model,
                ignored=auto.ignored,
                int8=len(auto.model.int8_layers),
                extra={"auto_steps": auto.steps},
            )
            ptq_node(sa, f"accuracy-aware ignore list ({len(auto.ignored)} layers)")
    if auto.ignored:
        missed = "" if auto.met else " - budget not met even so"
        run.decide(
            "static-auto",
            f"kept {len(auto.ignored)} most sensitive layer(s) in float",
            f"fewest layers of the sensitivity ranking bringing the val drop within "
            f"{cfg.max_drop} pts{missed}",
        )
    else:
        run.decide(
            "static-auto",
            "no layer needs to stay in float",
            f"static PTQ of all layers is already within {cfg.max_drop} pts on val "
            "(the auto variant would equal 'static')",
        )
        run.flow.append(
            {
                "label": "accuracy-aware ignore list",
                "status": "skip",
                "detail": "empty: all-int8 static PTQ already within budget",
            }
        )

    with _timed(run, "dynamic", log) as rec:
        if cfg.backend == "x86":
            dq = quantize_dynamic(model, DynamicPTQ())
            dy = add("dynamic", "pytorch-dynamic", dq.module, int8=len(dq.int8_layers))
        else:  # the edge path: the quantizer's own dynamic config, lowered like the rest
            dq = quantize_dynamic_pt2e(
                model, examples[32][:8], backend=cfg.backend, per_channel=cfg.per_channel
            )
            dy = add("dynamic", f"pt2e-{cfg.backend}", dq, int8=len(dq.int8_layers))
        rec.update(val_drop_pts=dy.val_drop_pts)
    ptq_node(dy, "dynamic int8 (Linear)")

    best_ptq = min(run.variants[1:], key=lambda v: v.val_drop_pts)
    need_qat = best_ptq.val_drop_pts > cfg.max_drop or cfg.force_qat
    reason = (
        f"best post-training val drop {best_ptq.val_drop_pts:.2f} pts "
        f"({best_ptq.row.variant}) vs budget {cfg.max_drop} pts"
    )
    if not cfg.qat:
        run.decide("qat", "skipped", f"QAT skipped: --no-qat ({reason})")
        run.flow.append({"label": "QAT + Optuna", "status": "skip", "detail": "skipped: --no-qat"})
    elif need_qat and qat_search is not None:
        run.decide(
            "qat",
            "run QAT with an Optuna search",
            reason
            + (" (forced)" if cfg.force_qat and best_ptq.val_drop_pts <= cfg.max_drop else ""),
        )
        with _timed(run, "qat", log) as rec:
            converted, details = qat_search()
            int8_names, _ = split_int8(model, converted)
            qv = add("qat", f"pt2e-{cfg.backend}", converted, int8=len(int8_names), extra=details)
            rec.update(
                val_drop_pts=qv.val_drop_pts,
                **{k: details[k] for k in details if k in ("best_params", "trials")},
            )
        ptq_node(qv, f"QAT + Optuna ({cfg.trials} trials)")
    else:
        run.decide("qat", "skipped", reason + ("" if not need_qat else "; QAT unavailable"))
        run.flow.append(
            {
                "label": "QAT + Optuna",
                "status": "skip",
                "detail": "skipped: post-training meets the budget",
            }
        )

    rows = finalize([v.row for v in run.variants])
    for v, r in zip(run.variants, rows, strict=True):
        v.row = r
    run.final, run.final_reason = choose_final(run.variants, cfg.max_drop)
    run.decide(
        "final", f"chose {run.final.row.variant} ({run.final.row.backend})", run.final_reason
    )
    run.flow.append(
        {
            "label": f"final: {run.final.row.variant}",
            "status": "final",
            "detail": f"test {run.final.row.accuracy:.4f} (drop "
            f"{run.final.row.drop_pts:.2f} pts) | "
            f"{run.final.row.size_mb:.2f} MiB",
        }
    )
    return run
