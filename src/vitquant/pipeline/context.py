"""What the steps share - the model, the data, one ``Measurer`` - and how a step's model becomes
a measured row: saved to ``artifacts/``, described as a ``Candidate``, measured on val and test.

Saving, lowering and exporting go through the quantizer's backend (``vitquant.quant.backends``):
x86 pt2e graphs are measured as the inductor-lowered model (``X86Backend.lower``: the int8
kernels that deploy, ~10x faster than the eager emulation at 224 px) and fall back to the eager
graph, marked ``simulated``, when inductor cannot compile them; other pt2e graphs are the eager
emulation (``simulated``). With ``export="pte"`` each pt2e graph waits in ``pending_pte`` for
its ExecuTorch twin (``measure_pte``, ``XnnpackBackend.export``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.measure import Candidate, Measurer
from vitquant.pipeline.choose import Choice, val_drop_pts
from vitquant.pipeline.config import PipelineConfig
from vitquant.results import ResultRow

if TYPE_CHECKING:  # quant.pt2e imports torchao: loaded when a step quantizes, not on import
    from vitquant.quant.backends import Backend
    from vitquant.quant.pt2e import QuantizedModel


@dataclass
class Context:
    """The inputs of every step, and what earlier steps leave for later ones.

    Attributes:
        model, spec, bundle, cfg, out: the float model, its ``ModelSpec``, the data, the
            recipe and the run folder.
        measurer: builds every row (roles ``val`` and ``test``).
        analyze: ``analyze(out_dir) -> list[PointStats]``, the activation analysis.
        qat_search: ``qat_search() -> (converted, details)``, the QAT branch (None: none).
        log: progress lines.
        s_per_image: seconds per image of a float evaluation (set by the fp32 step).
        significant: quantizable layers owning significant outlier points (analysis step).
        static_model: the all-int8 static model (static step), step 0 of the ignore search.
        choice: the final choice (final step).
        pending_pte: variant -> (pt2e candidate, ``QuantizedModel``) awaiting its ``.pte`` twin.
        pending_ov: variant -> (pt2e candidate, ``QuantizedModel``) awaiting its OpenVINO twin.
    """

    model: nn.Module
    spec: object
    bundle: DataBundle
    cfg: PipelineConfig
    out: Path
    measurer: Measurer
    analyze: Callable[[Path], list]
    qat_search: Callable[[], tuple[object, dict]] | None = None
    log: Callable[[str], None] = print
    s_per_image: float = 0.0
    significant: list[str] = field(default_factory=list)
    static_model: QuantizedModel | None = None
    choice: Choice | None = None
    pending_pte: dict[str, tuple] = field(default_factory=dict)
    pending_ov: dict[str, tuple] = field(default_factory=dict)
    stats: list | None = None  # the analysis step's PointStats
    lowbit_best: ResultRow | None = None  # low-bit target: the best row so far (val)
    lowbit_recipe: tuple[str, ...] = ()  # low-bit target: the ViT-aware methods chosen

    def __post_init__(self) -> None:
        from vitquant.layers import quantizable_names

        self.names = quantizable_names(self.model)
        self.artifacts = self.out / "artifacts"

    @property
    def backend(self) -> Backend:
        """The quantizer's backend (``cfg.backend``): saves, lowers and exports every variant."""
        from vitquant.quant.backends import get_backend

        return get_backend(self.cfg.backend)

    @property
    def lowers(self) -> bool:
        """Whether pt2e graphs are measured lowered (``Backend.lowers`` and ``cfg.lower``)."""
        return self.cfg.lower and self.backend.lowers

    @property
    def pt2e_backend(self) -> str:
        return self.backend.graph_label

    @property
    def static_cfg(self):
        from vitquant.quant.configs import StaticPTQ

        cfg = self.cfg
        return StaticPTQ(
            backend=cfg.backend,
            per_channel=cfg.per_channel,
            observer=cfg.observer,
            int8_attention=cfg.int8_attention,
        )

    @property
    def fp32(self) -> ResultRow:
        measured = self.measurer.find("fp32", "pytorch")
        if measured is None:
            raise RuntimeError("the fp32 step runs first")
        return measured.row

    def val_drop(self, row: ResultRow) -> float:
        """Val drop of ``row`` in points against the fp32 row."""
        return val_drop_pts(row, self.fp32)

    def example(self, n: int = 8) -> torch.Tensor:
        """``n`` images of the timing batch, to export graphs with."""
        return self.measurer.examples[32][:n]

    def measure_eager(
        self,
        variant: str,
        backend: str,
        module: nn.Module,
        *,
        int8_layers: list[str],
        float_layers: list[str],
        ignored: list[str] = (),
        extra: dict | None = None,
    ) -> ResultRow:
        """Save ``module``'s state dict as ``<variant>.pt`` and measure it as it runs."""
        from vitquant.quant.artifacts import save_state_dict

        path = save_state_dict(module, self.artifacts / f"{variant}.pt")
        cand = Candidate(
            variant=variant,
            backend=backend,
            runner=module.eval(),
            artifact=path,
            int8_layers=int8_layers,
            float_layers=float_layers,
            ignored=ignored,
            extra=dict(extra or {}),
        )
        return self.measurer.measure(cand)

    def measure_quantized(
        self,
        variant: str,
        qm: QuantizedModel | torch.fx.GraphModule,
        *,
        dynamic: bool = False,
        int8_layers: list[str] | None = None,
        float_layers: list[str] | None = None,
        ignored: list[str] | None = None,
        extra: dict | None = None,
    ) -> ResultRow:
        """Save ``qm`` (``Backend.save``: ``<variant>.pt2``, or ``.pt`` for an eager dynamic
        model) and measure the runner ``Backend.lower`` gives (x86: inductor-lowered).

        Args:
            variant: the row's variant, also the file stem.
            qm: a ``QuantizedModel`` or a converted graph.
            dynamic: a dynamic int8 model (row label ``Backend.dynamic_label``).
            int8_layers, float_layers, ignored: default to ``qm``'s own.
            extra: more details for the row.
        """
        from vitquant.quant.pt2e import QuantizedModel

        if not isinstance(qm, QuantizedModel):
            qm = QuantizedModel(qm, [], [], [], example=self.example())
        elif qm.example is None:
            qm.example = self.example()
        backend = self.backend
        path = backend.save(qm, self.artifacts / variant)
        lowered = backend.lower(qm.module, enabled=self.lowers, probe=self.measurer.examples[32])
        extra = {**(extra or {}), **lowered.extra}
        if "lowering_error" in lowered.extra:
            self.log(f"inductor could not lower {variant} ({lowered.extra['lowering_error']})")
        graph = isinstance(qm.module, torch.fx.GraphModule)
        if graph:
            extra["accuracy_on"] = (
                "eager emulation (quantize/dequantize in fp32)"
                if lowered.simulated
                else "inductor-lowered int8 kernels"
            )
        cand = Candidate(
            variant=variant,
            backend=backend.dynamic_label if dynamic else backend.graph_label,
            runner=lowered.runner,
            artifact=path,
            int8_layers=qm.int8_layers if int8_layers is None else int8_layers,
            float_layers=qm.float_layers if float_layers is None else float_layers,
            ignored=qm.ignored if ignored is None else ignored,
            simulated=lowered.simulated,
            extra=extra,
        )
        try:
            row = self.measurer.measure(cand)
        finally:
            if self.lowers:
                torch._dynamo.reset()  # free the compiled graphs before the next variant
        if graph and self.cfg.export in backend.exports:
            self.pending_pte[variant] = (cand, qm)
        if graph and self.cfg.openvino:
            from vitquant.quant.configs import StaticPTQ

            if isinstance(qm.config, StaticPTQ):  # NNCF's PTQ mirrors static variants only
                self.pending_ov[variant] = (cand, qm)
        return row

    def measure_openvino(self, variant: str):
        """The OpenVINO twin of the pending static ``variant`` (``OpenVinoBackend.export``: NNCF
        on the float model, ``qm``'s calibration and ignore list), measured in OpenVINO; the
        fp32 IR is measured first, once (its runtime's fp32 reference). Returns
        ``(row, Exported)``."""
        from vitquant.quant.backends import get_backend
        from vitquant.quant.variant_rows import float_row

        cand, qm = self.pending_ov.pop(variant)
        ov = get_backend("openvino")
        if self.measurer.find("fp32", ov.label) is None:
            float_row(ov, self.measurer, self.model, self.example(), self.artifacts)
        exported = ov.export(
            qm,
            self.artifacts / f"{variant}{ov.suffix}",
            model=self.model,
            bundle=self.bundle,
            spec=self.spec,
        )
        return self._measure_twin(ov, exported, variant, cand.backend, exported.extra), exported

    def _measure_twin(self, backend, exported, variant: str, source: str, extra: dict):
        """Load ``backend``'s artifact ``exported`` back and measure it as the twin of the
        ``(variant, source)`` row (``agreement_pt2e`` against it)."""
        twin = Candidate(
            variant=variant,
            backend=backend.label,
            runner=backend.load(exported.path, threads=self.measurer.threads),
            runtime=backend.runtime,
            artifact=exported.path,
            int8_layers=exported.int8_layers,
            float_layers=exported.float_layers,
            ignored=exported.ignored,
            twin=(variant, source),
            extra=dict(extra),
        )
        return self.measurer.measure(twin)

    def measure_pte(self, variant: str):
        """Export the pending pt2e graph of ``variant`` with the backend (``Backend.export``:
        the XNNPACK ``.pte``) and measure it in its runtime; returns ``(row, Exported)``."""
        from vitquant.quant.pt2e import QuantizedModel

        cand, qm = self.pending_pte.pop(variant)
        qm = QuantizedModel(
            qm.module,
            list(cand.int8_layers),
            list(cand.float_layers),
            list(cand.ignored),
            example=qm.example,
        )
        backend = self.backend
        exported = backend.export(qm, self.artifacts / f"{variant}{backend.suffix}")
        extra = dict(exported.extra)
        if exported.note:
            extra["lowering_note"] = exported.note
        return self._measure_twin(backend, exported, variant, cand.backend, extra), exported

    def search_val_accuracy(self, qm: QuantizedModel) -> float:
        """Val accuracy of one ignore-list search step: on the lowered model when the backend
        lowers (as its row would be measured), else on the eager graph. Not a row: a choice."""
        from vitquant.evaluate import accuracy

        if self.lowers:
            lowered = self.backend.lower(qm.module)
            try:
                if not lowered.simulated:
                    return accuracy(lowered.runner, self.bundle, "val", self.spec)
            except Exception:  # no compiler, unsupported pattern: the emulation below
                pass
            finally:
                torch._dynamo.reset()
        return accuracy(qm.module, self.bundle, "val", self.spec)
