"""The quantize study as one call: every variant, saved, measured, as results rows.

``run_variants(model, bundle, spec, job, artifacts=DIR)`` is what ``vitquant quantize`` and the
pipeline call. It produces, in this order (each PyTorch variant followed by its ONNX Runtime
twin when ``job.onnx``):

============== ================== =====================================================
variant        backends           what
============== ================== =====================================================
fp32           pytorch, ort       the float model
dynamic        pytorch, ort       dynamic int8 (``DynamicPTQ``); with the XNNPACK quantizer
               pt2e-Q, [et], ort  pt2e dynamic int8 (``quantize_dynamic_pt2e``)
static         pt2e-Q, [et], ort  static int8, every Linear/Conv (``StaticPTQ``)
static-ignore  pt2e-Q, [et], ort  static int8 keeping ``job.ignore`` in float (if given)
static-auto    pt2e-Q, [et], ort  static int8 keeping ``select_ignore``'s choice in float
============== ================== =====================================================

``Q`` is the pt2e quantizer (``x86`` or ``xnnpack``); ``et`` is the ``executorch-xnnpack`` row
of the lowered ``.pte`` program (``job.export == "pte"``, XNNPACK quantizer only).

Accuracy is on the ``test`` role; every choice (``--ignore auto``) is made on ``val``. Latency
is the median per image after warm-up at each of ``job.latency_batches`` with
``job.threads`` threads; x86 pt2e graphs are timed after inductor lowering (``simulated`` is
set when lowering failed and the emulation was timed); XNNPACK pt2e graphs are timed as the
eager emulation (``simulated``) - their int8 kernels run in the ``.pte`` row. ``finalize`` adds
``drop_pts``, ``speedup`` and the composite ``score`` against the PyTorch fp32 row; ONNX
Runtime and ExecuTorch rows also carry ``extra.vs_pytorch_pts`` and ``extra.pred_agreement``
against their PyTorch counterpart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.evaluate import count_layers, example_batch, file_size_mb, predict, set_threads
from vitquant.quant.artifacts import (
    lowered_latency,
    measure_latency,
    save_pt2e,
    save_state_dict,
)
from vitquant.quant.auto import AutoResult, outlier_ranking, select_ignore, sweep_top_k
from vitquant.quant.configs import DynamicPTQ, StaticPTQ, check_export
from vitquant.quant.dynamic import quantize_dynamic, quantize_dynamic_pt2e
from vitquant.quant.lowered import inductor_lowers
from vitquant.quant.pt2e import (
    QuantizedModel,
    quantize_static,
)
from vitquant.quant.scope import IgnoreScope, ResolvedScope
from vitquant.results import ResultRow, ScoreWeights, finalize

VARIANTS = ("fp32", "dynamic", "static", "static-ignore", "static-auto")


@dataclass(frozen=True)
class QuantizeJob:
    """What ``run_variants`` produces and how it measures.

    Attributes:
        static: the static PTQ recipe (pt2e, mirrored for ONNX Runtime).
        dynamic: the dynamic int8 recipe.
        ignore: the user's ignore list (``static-ignore``); ``static-auto`` chooses on its own,
            starting from every layer in int8.
        auto_max_drop: budget in points for ``static-auto`` (None: no auto variant).
        auto_ranking: layers most sensitive first (None: ``vitquant.analysis.sensitivity``).
        auto_val_limit: val images used by the auto selection (None: all of val).
        top_k: k values of the outlier sweep (empty: no sweep).
        variants: which of ``VARIANTS`` to produce.
        onnx: also export and quantize with ONNX Runtime.
        export: ``pte``: also lower each static variant to an ExecuTorch XNNPACK program and
            measure it (needs ``static.backend == "xnnpack"``); ``none``: no extra artifact.
        lower: time x86 pt2e graphs after inductor lowering (else eager, ``simulated``).
        latency_batches: batch sizes timed; ``latency_batch`` is the one in the row.
        threads: intra-op threads for PyTorch and ONNX Runtime (None: all cores).
        weights: composite score weights.
    """

    static: StaticPTQ = StaticPTQ()
    dynamic: DynamicPTQ = DynamicPTQ()
    ignore: IgnoreScope = IgnoreScope()
    auto_max_drop: float | None = None
    auto_ranking: tuple[str, ...] | None = None
    auto_val_limit: int | None = None
    top_k: tuple[int, ...] = ()
    variants: tuple[str, ...] = VARIANTS
    onnx: bool = True
    export: str = "none"
    lower: bool = True
    latency_batches: tuple[int, ...] = (1, 32)
    latency_batch: int = 1
    threads: int | None = None
    weights: ScoreWeights = ScoreWeights()

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise VitquantError(
                f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}."
            )
        if self.latency_batch not in self.latency_batches:
            raise VitquantError(
                f"--latency-batch {self.latency_batch} is not among the timed batches "
                f"{list(self.latency_batches)}."
            )
        if any(b <= 0 for b in self.latency_batches):
            raise VitquantError("latency batch sizes must be > 0.")
        check_export(self.export, self.static.backend)
        if self.export == "pte" and not any(v != "fp32" for v in self.variants):
            raise VitquantError(
                "--export pte lowers the int8 variants, and none is requested: use --method "
                "static, dynamic or all."
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ignore"] = self.ignore.entries()
        return d


@dataclass
class VariantsResult:
    """Everything ``run_variants`` measured.

    Attributes:
        rows: the results rows (finalized: drop, speedup, score).
        scope: the resolved user ignore list.
        auto: the accuracy-aware selection (steps on val), if run.
        sweep: the top-k outlier sweep rows (``k``, ``ignored``, ``val_acc``, ``test_acc``).
        onnx_nodes: module -> ONNX node names of the float export.
        threads: intra-op threads used for latency.
        notes: remarks (parameter mapping, lowering fallbacks, ...).
        seconds: wall time of the whole run.
    """

    rows: list[ResultRow]
    scope: ResolvedScope
    auto: AutoResult | None = None
    sweep: list[dict] | None = None
    onnx_nodes: dict[str, list[str]] = field(default_factory=dict)
    threads: int = 1
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def payload(self) -> dict:
        """JSON-ready dict: ``results`` (rows) plus the auto steps, sweep and notes."""
        return {
            "results": [r.to_dict() for r in self.rows],
            "ignore": {
                "modules": self.scope.modules,
                "notes": self.scope.notes,
                "matches": self.scope.matches,
            },
            "auto": self.auto.to_dict() if self.auto else None,
            "top_k_sweep": self.sweep,
            "onnx_nodes": self.onnx_nodes,
            "threads": self.threads,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def run_variants(
    model: nn.Module,
    bundle: DataBundle,
    spec,
    job: QuantizeJob = QuantizeJob(),
    *,
    artifacts: str | Path,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> VariantsResult:
    """Build, save and measure every variant of ``job`` (see the module docstring).

    Args:
        model: the float model (not modified).
        bundle: data: ``calib`` calibrates, ``val`` chooses, ``test`` reports.
        spec: the model's ``ModelSpec``.
        job: what to produce.
        artifacts: folder for the saved models (created on the first write).
        log: one line per step.
        progress: show progress bars while evaluating.

    Raises:
        VitquantError: an ignore entry matches nothing (raised before anything is written).
    """
    start = time.perf_counter()
    model = model.eval()
    scope = job.ignore.resolve(model) if job.ignore else ResolvedScope()
    if "static-ignore" in job.variants and not scope.modules:
        job_variants = [v for v in job.variants if v != "static-ignore"]
    else:
        job_variants = list(job.variants)
    if job.auto_max_drop is None:
        job_variants = [v for v in job_variants if v != "static-auto"]
    artifacts = Path(artifacts)
    threads = set_threads(job.threads)
    examples = {b: example_batch(bundle, spec, b) for b in job.latency_batches}
    n_layers = count_layers(model)
    notes = list(scope.notes)
    rows: list[ResultRow] = []
    preds: dict[tuple[str, str], torch.Tensor] = {}

    def evaluate(fn, label: str) -> tuple[float, torch.Tensor]:
        logits, labels = predict(fn, bundle, "test", spec, progress=label if progress else None)
        pred = logits.argmax(1)
        return (pred == labels).float().mean().item(), pred

    def add(row: ResultRow, pred: torch.Tensor, lat: dict[int, float]) -> None:
        row.latency_ms_per_image = lat[job.latency_batch]
        row.latency_batch = job.latency_batch
        row.latency_threads = threads
        row.extra["latency_ms_per_image_by_batch"] = {str(b): v for b, v in lat.items()}
        preds[(row.variant, row.backend)] = pred
        rows.append(row)
        log(
            f"{row.variant:<14} {row.backend:<18} acc {row.accuracy:.4f}  size "
            f"{row.size_mb:.3f} MiB  {row.latency_ms_per_image:.3f} ms/img"
            f"{' (simulated)' if row.simulated else ''}"
        )

    n_test = len(bundle.test_idx)

    # fp32 -------------------------------------------------------------------------------------
    acc, pred = evaluate(model, "fp32")
    path = save_state_dict(model, artifacts / "fp32.pt")
    add(
        ResultRow(
            variant="fp32",
            backend="pytorch",
            accuracy=acc,
            n=n_test,
            float_layers=n_layers,
            size_mb=file_size_mb(path),
            artifact=str(path),
        ),
        pred,
        measure_latency(model, examples),
    )
    fp32_onnx = None
    if job.onnx:
        from vitquant.quant.onnx_backend import OrtModel, export_onnx

        calib_x = next(bundle.batches("calib", spec, batch_size=4))[0]
        fp32_onnx = export_onnx(model, calib_x, artifacts / "fp32.onnx")
        ort = OrtModel(fp32_onnx.path, threads=threads)
        acc, pred = evaluate(ort, "fp32 onnx")
        add(
            ResultRow(
                variant="fp32",
                backend="onnxruntime",
                accuracy=acc,
                n=n_test,
                float_layers=n_layers,
                size_mb=file_size_mb(fp32_onnx.path),
                artifact=str(fp32_onnx.path),
            ),
            pred,
            measure_latency(ort, examples),
        )

    ctx = _Context(
        job, bundle, spec, artifacts, add, evaluate, n_test, examples, notes, fp32_onnx, threads
    )

    # dynamic ----------------------------------------------------------------------------------
    if "dynamic" in job_variants and job.static.backend != "x86":
        _dynamic_pt2e_rows(ctx, model)
    elif "dynamic" in job_variants:
        dq = quantize_dynamic(model, job.dynamic)
        notes.extend(f"dynamic: {n}" for n in dq.notes)
        acc, pred = evaluate(dq.module, "dynamic")
        path = save_state_dict(dq.module, artifacts / "dynamic.pt")
        add(
            ResultRow(
                variant="dynamic",
                backend="pytorch",
                accuracy=acc,
                n=n_test,
                int8_layers=len(dq.int8_layers),
                float_layers=len(dq.float_layers),
                size_mb=file_size_mb(path),
                artifact=str(path),
                extra={"config": job.dynamic.to_dict(), "int8": dq.int8_layers},
            ),
            pred,
            measure_latency(dq.module, examples),
        )
        if fp32_onnx is not None:
            from vitquant.quant.onnx_backend import quantize_onnx_dynamic

            oq = quantize_onnx_dynamic(
                fp32_onnx, artifacts / "dynamic.onnx", modules=dq.int8_layers
            )
            _ort_row(add, evaluate, oq, "dynamic", n_test, threads, examples)

    # static variants --------------------------------------------------------------------------
    auto = None
    plan: list[tuple[str, list[str]]] = []
    if "static" in job_variants:
        plan.append(("static", []))
    if "static-ignore" in job_variants:
        plan.append(("static-ignore", list(scope.modules)))
    if "static-auto" in job_variants:
        log(
            f"static-auto: choosing layers to keep in float on val (max drop "
            f"{job.auto_max_drop} pts)"
        )
        auto = select_ignore(
            model,
            bundle,
            spec,
            job.static,
            max_drop=job.auto_max_drop,
            ranking=list(job.auto_ranking) if job.auto_ranking is not None else None,
            val_limit=job.auto_val_limit,
            log=log,
        )
        if not auto.met:
            notes.append(
                f"static-auto: the whole ranking ({len(auto.ranking)} layers) in "
                f"float still drops {auto.drop_pts:.2f} pts on val > "
                f"{auto.max_drop}"
            )
        plan.append(("static-auto", list(auto.ignored)))
    for variant, ignored in plan:
        if variant == "static-auto" and auto is not None and auto.model is not None:
            qm = auto.model
        else:
            qm = quantize_static(model, bundle, spec, job.static, ignore=ignored)
        _static_rows(ctx, qm, variant, auto if variant == "static-auto" else None)

    # top-k outlier sweep ----------------------------------------------------------------------
    sweep = None
    if job.top_k:
        ranking = outlier_ranking(model, bundle, spec)
        log(f"top-k sweep over {list(job.top_k)}; outlier ranking: {', '.join(ranking[:10])}")
        sweep = sweep_top_k(
            model,
            bundle,
            spec,
            job.static,
            ranking=ranking,
            ks=job.top_k,
            roles=("val", "test"),
            log=log,
        )

    finalize(rows, job.weights)
    _agreement(rows, preds)
    return VariantsResult(
        rows=rows,
        scope=scope,
        auto=auto,
        sweep=sweep,
        onnx_nodes=fp32_onnx.module_nodes if fp32_onnx else {},
        threads=threads,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


@dataclass
class _Context:
    """What the per-variant helpers of ``run_variants`` share."""

    job: QuantizeJob
    bundle: DataBundle
    spec: object
    artifacts: Path
    add: Callable
    evaluate: Callable
    n_test: int
    examples: dict
    notes: list
    fp32_onnx: object
    threads: int


def _static_rows(ctx: _Context, qm: QuantizedModel, variant: str, auto) -> None:
    job, artifacts, add, evaluate, notes = ctx.job, ctx.artifacts, ctx.add, ctx.evaluate, ctx.notes
    n_test, examples, fp32_onnx = ctx.n_test, ctx.examples, ctx.fp32_onnx
    bundle, spec, threads = ctx.bundle, ctx.spec, ctx.threads
    cfg: StaticPTQ = job.static
    acc, pred = evaluate(qm.module, variant)
    path = save_pt2e(qm.module, qm.example, artifacts / f"{variant}.pt2")
    extra = {"config": cfg.to_dict(), "int8": qm.int8_layers, "float": qm.float_layers}
    if auto is not None:
        extra["auto"] = {
            "val_drop_pts": auto.drop_pts,
            "met_on_val": auto.met,
            "max_drop": auto.max_drop,
            "steps": len(auto.steps),
        }
    if job.lower and inductor_lowers(cfg.backend):
        lat, simulated, error, agree = lowered_latency(qm.module, examples)
        extra["timed"] = "eager (lowering failed)" if simulated else "inductor-lowered int8"
        if error:
            extra["lowering_error"] = error
            notes.append(f"{variant}: inductor lowering failed, eager emulation timed ({error})")
        if agree is not None:
            extra["lowered_vs_eager_agreement"] = agree
    else:
        lat, simulated = measure_latency(qm.module, examples), True
        extra["timed"] = "eager quantize/dequantize emulation"
        if job.lower:
            extra["timed"] += " (inductor's int8 patterns are the x86 quantizer's)"
    extra["accuracy_from"] = "eager graph (int8 values emulated in fp32)"
    add(
        ResultRow(
            variant=variant,
            backend=f"pt2e-{cfg.backend}",
            accuracy=acc,
            n=n_test,
            int8_layers=len(qm.int8_layers),
            float_layers=len(qm.float_layers),
            size_mb=file_size_mb(path),
            simulated=simulated,
            ignored=list(qm.ignored),
            artifact=str(path),
            extra=extra,
        ),
        pred,
        lat,
    )
    if job.export == "pte":
        _pte_row(ctx, qm, variant)
    torch._dynamo.reset()  # free compiled graphs of this variant
    if fp32_onnx is not None:
        from vitquant.quant.onnx_backend import quantize_onnx_static

        oq = quantize_onnx_static(
            fp32_onnx,
            bundle,
            spec,
            artifacts / f"{variant}.onnx",
            ignore=qm.ignored,
            modules=qm.int8_layers,
            per_channel=cfg.per_channel,
            symmetric_activations=cfg.symmetric_activations,
            observer=cfg.observer,
            percentile=cfg.percentile,
            calib=cfg.calib,
            calib_batch=cfg.calib_batch,
        )
        _ort_row(add, evaluate, oq, variant, n_test, threads, examples)


def _dynamic_pt2e_rows(ctx: _Context, model: nn.Module) -> None:
    """The dynamic variant with the XNNPACK quantizer: pt2e graph, its ``.pte``, its ORT twin."""
    backend = ctx.job.static.backend
    example = next(ctx.bundle.batches("calib", ctx.spec, batch_size=8))[0]
    qm = quantize_dynamic_pt2e(
        model, example, backend=backend, per_channel=ctx.job.static.per_channel
    )
    acc, pred = ctx.evaluate(qm.module, "dynamic")
    path = save_pt2e(qm.module, qm.example, ctx.artifacts / "dynamic.pt2")
    ctx.add(
        ResultRow(
            variant="dynamic",
            backend=f"pt2e-{backend}",
            accuracy=acc,
            n=ctx.n_test,
            int8_layers=len(qm.int8_layers),
            float_layers=len(qm.float_layers),
            size_mb=file_size_mb(path),
            simulated=True,
            artifact=str(path),
            extra={
                "config": qm.config,
                "int8": qm.int8_layers,
                "float": qm.float_layers,
                "timed": "eager quantize/dequantize emulation",
            },
        ),
        pred,
        measure_latency(qm.module, ctx.examples),
    )
    if ctx.job.export == "pte":
        _pte_row(ctx, qm, "dynamic")
    if ctx.fp32_onnx is not None:
        from vitquant.quant.onnx_backend import quantize_onnx_dynamic

        oq = quantize_onnx_dynamic(
            ctx.fp32_onnx, ctx.artifacts / "dynamic.onnx", modules=qm.int8_layers
        )
        _ort_row(ctx.add, ctx.evaluate, oq, "dynamic", ctx.n_test, ctx.threads, ctx.examples)


def _pte_row(ctx: _Context, qm: QuantizedModel, variant: str) -> None:
    """Lower ``qm`` to an XNNPACK ``.pte``, run it with ExecuTorch's runtime, add its row."""
    from vitquant.quant.executorch_backend import BACKEND, PteModel, export_pte

    exported = export_pte(qm.module, qm.example, ctx.artifacts / f"{variant}.pte")
    ctx.notes.append(f"{variant} .pte: {exported.note()}")
    runner = PteModel(exported.path, threads=ctx.threads)
    acc, pred = ctx.evaluate(runner, f"{variant} pte")
    ctx.add(
        ResultRow(
            variant=variant,
            backend=BACKEND,
            accuracy=acc,
            n=ctx.n_test,
            int8_layers=len(qm.int8_layers),
            float_layers=len(qm.float_layers),
            size_mb=file_size_mb(exported.path),
            ignored=list(qm.ignored),
            artifact=str(exported.path),
            extra={
                "lowering": exported.to_dict(),
                "runtime_threads": runner.threads,
                "int8": qm.int8_layers,
            },
        ),
        pred,
        measure_latency(runner, ctx.examples),
    )


def _ort_row(add, evaluate, oq, variant: str, n_test: int, threads: int, examples) -> None:
    from vitquant.quant.onnx_backend import OrtModel

    ort = OrtModel(oq.path, threads=threads)
    acc, pred = evaluate(ort, f"{variant} onnx")
    add(
        ResultRow(
            variant=variant,
            backend="onnxruntime",
            accuracy=acc,
            n=n_test,
            int8_layers=len(oq.int8_layers),
            float_layers=len(oq.float_layers),
            size_mb=file_size_mb(oq.path),
            ignored=list(oq.ignored),
            artifact=str(oq.path),
            extra={"mode": oq.mode, "int8": oq.int8_layers, "excluded_nodes": oq.excluded_nodes},
        ),
        pred,
        measure_latency(ort, examples),
    )


RUNTIME_BACKENDS = ("onnxruntime", "executorch-xnnpack")  # rows with a PyTorch twin


def _agreement(rows: list[ResultRow], preds: dict) -> None:
    """Runtime rows (ORT, ExecuTorch) vs the PyTorch row of the same variant."""
    pytorch = {r.variant: r for r in rows if r.backend not in RUNTIME_BACKENDS}
    for r in rows:
        if r.backend not in RUNTIME_BACKENDS or r.variant not in pytorch:
            continue
        twin = pytorch[r.variant]
        a, b = preds[(r.variant, r.backend)], preds[(twin.variant, twin.backend)]
        r.extra["vs_pytorch_pts"] = round((r.accuracy - twin.accuracy) * 100, 4)
        r.extra["pred_agreement"] = (a == b).float().mean().item()
        r.extra["pytorch_backend"] = twin.backend
