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

Every row is a ``vitquant.measure.Candidate`` measured once on the ``test`` role by one
``Measurer`` (``vitquant.quant.variant_rows`` builds them through the backend registry); every
choice (``--ignore auto``) is made on ``val``. Latency is the median per image after warm-up at
each of ``job.latency_batches`` with ``job.threads`` threads. x86 pt2e graphs are measured and
timed after inductor lowering (``simulated`` when lowering failed and the eager emulation ran;
``extra.lowered_vs_eager_agreement`` compares the two once, on the largest timed batch);
XNNPACK pt2e graphs run as the eager emulation (``simulated``) - their int8 kernels run in the
``.pte`` row. ONNX Runtime and ExecuTorch rows carry ``agreement_pt2e`` with the PyTorch row
they were made from (``extra.twin``). ``Measurer.finalize`` adds ``drop_pts``,
``speedup_vs_fp32_eager``, ``speedup_vs_fp32_same_runtime`` and the composite ``score``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.measure import Measurer
from vitquant.quant.auto import AutoResult, outlier_ranking, select_ignore, sweep_top_k
from vitquant.quant.backends import get_backend
from vitquant.quant.configs import DynamicPTQ, StaticPTQ, check_export
from vitquant.quant.pt2e import quantize_static
from vitquant.quant.scope import IgnoreScope, ResolvedScope
from vitquant.quant.variant_rows import VariantRows
from vitquant.results import ResultRow, ScoreWeights

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
        openvino: also quantize each static variant with NNCF and run it in OpenVINO.
        export: ``pte``: also lower each static variant to an ExecuTorch XNNPACK program and
            measure it (needs ``static.backend == "xnnpack"``); ``none``: no extra artifact.
        lower: let the backend lower pt2e graphs (x86: inductor), which are then measured and
            timed as lowered (else the eager emulation, ``simulated``).
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
    openvino: bool = False
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
        rows: the results rows (finalized: drop, both speedups, score).
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
    notes = list(scope.notes)
    measurer = Measurer(
        bundle,
        spec,
        roles=("test",),
        latency_batches=job.latency_batches,
        latency_batch=job.latency_batch,
        threads=job.threads,
        progress=progress,
        log=log,
    )
    rows = VariantRows(
        backend=get_backend(job.static.backend),
        measurer=measurer,
        artifacts=Path(artifacts),
        bundle=bundle,
        spec=spec,
        lower=job.lower,
        export=job.export,
        onnx=job.onnx,
        openvino=job.openvino,
        notes=notes,
    )
    rows.fp32(model)
    if "dynamic" in job_variants:
        example = next(bundle.batches("calib", spec, batch_size=8))[0]
        dq = rows.backend.quantize_dynamic(
            model, example=example, cfg=job.dynamic, per_channel=job.static.per_channel
        )
        notes.extend(f"dynamic: {n}" for n in dq.notes)
        rows.quantized(dq, "dynamic", dynamic=True)

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
        extra = None
        if variant == "static-auto" and auto is not None:
            extra = {
                "auto": {
                    "val_drop_pts": auto.drop_pts,
                    "met_on_val": auto.met,
                    "max_drop": auto.max_drop,
                    "steps": len(auto.steps),
                }
            }
        rows.quantized(qm, variant, extra=extra)

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

    return VariantsResult(
        rows=measurer.finalize(job.weights),
        scope=scope,
        auto=auto,
        sweep=sweep,
        onnx_nodes=rows.source.module_nodes if rows.source else {},
        threads=measurer.threads,
        notes=notes,
        seconds=time.perf_counter() - start,
    )
