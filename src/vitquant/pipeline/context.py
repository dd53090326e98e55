"""What the steps share - the model, the data, one ``Measurer`` - and how a step's model becomes
a measured row: saved to ``artifacts/``, described as a ``Candidate``, measured on val and test.

x86 pt2e graphs are measured as the inductor-lowered model (``LoweredModel``: the int8 kernels
that deploy, ~10x faster than the eager emulation at 224 px) and fall back to the eager graph,
marked ``simulated``, when inductor cannot compile them; other pt2e graphs are the eager
emulation (``simulated``). With ``export="pte"`` each pt2e graph waits in ``pending_pte`` for
its ExecuTorch twin (``measure_pte``).
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
        pending_pte: variant -> (pt2e candidate, graph, example) awaiting its ``.pte`` twin.
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

    def __post_init__(self) -> None:
        from vitquant.layers import quantizable_names

        self.names = quantizable_names(self.model)
        self.artifacts = self.out / "artifacts"

    @property
    def lowers(self) -> bool:
        """Whether pt2e graphs are measured after inductor lowering (x86 and ``cfg.lower``)."""
        from vitquant.quant.lowered import inductor_lowers

        return self.cfg.lower and inductor_lowers(self.cfg.backend)

    @property
    def pt2e_backend(self) -> str:
        return f"pt2e-{self.cfg.backend}"

    @property
    def static_cfg(self):
        from vitquant.quant.configs import StaticPTQ

        cfg = self.cfg
        return StaticPTQ(backend=cfg.backend, per_channel=cfg.per_channel, observer=cfg.observer)

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

    def measure_pt2e(
        self,
        variant: str,
        qm: QuantizedModel | torch.fx.GraphModule,
        *,
        int8_layers: list[str] | None = None,
        float_layers: list[str] | None = None,
        ignored: list[str] | None = None,
        extra: dict | None = None,
    ) -> ResultRow:
        """Save the converted graph as ``<variant>.pt2`` and measure it (lowered on x86).

        Layer lists default to ``qm``'s own (a ``QuantizedModel``).
        """
        from vitquant.quant.artifacts import save_pt2e
        from vitquant.quant.pt2e import QuantizedModel

        graph = qm.module if isinstance(qm, QuantizedModel) else qm
        example = qm.example if isinstance(qm, QuantizedModel) else None
        example = self.example() if example is None else example
        path = save_pt2e(graph, example, self.artifacts / f"{variant}.pt2")
        runner, extra = graph, dict(extra or {})
        lowered = None
        if self.lowers:
            lowered, lowering = lowered_runner(graph, self.measurer.examples[32], self.log)
            extra.update(lowering)
        if lowered is not None:
            runner = lowered
        else:
            extra["accuracy_on"] = "eager emulation (quantize/dequantize in fp32)"
        cand = Candidate(
            variant=variant,
            backend=self.pt2e_backend,
            runner=runner,
            artifact=path,
            int8_layers=qm.int8_layers if int8_layers is None else int8_layers,
            float_layers=qm.float_layers if float_layers is None else float_layers,
            ignored=qm.ignored if ignored is None else ignored,
            simulated=lowered is None,
            extra=extra,
        )
        try:
            row = self.measurer.measure(cand)
        finally:
            if lowered is not None:
                torch._dynamo.reset()  # free the compiled graphs before the next variant
        if self.cfg.export == "pte":
            self.pending_pte[variant] = (cand, graph, example)
        return row

    def measure_pte(self, variant: str):
        """Lower the pending pt2e graph of ``variant`` to an XNNPACK ``.pte`` and measure it
        with ExecuTorch's runtime; returns ``(row, PteExport)``."""
        from vitquant.quant.executorch_backend import BACKEND, PteModel, export_pte

        cand, graph, example = self.pending_pte.pop(variant)
        exported = export_pte(graph, example, self.artifacts / f"{variant}.pte")
        runner = PteModel(exported.path, threads=self.measurer.threads)
        twin = Candidate(
            variant=variant,
            backend=BACKEND,
            runner=runner,
            runtime="executorch",
            artifact=exported.path,
            int8_layers=cand.int8_layers,
            float_layers=cand.float_layers,
            ignored=cand.ignored,
            twin=(variant, cand.backend),
            extra={
                "lowering": exported.to_dict(),
                "lowering_note": exported.note(),
                "runtime_threads": runner.threads,
            },
        )
        return self.measurer.measure(twin), exported

    def search_val_accuracy(self, qm: QuantizedModel) -> float:
        """Val accuracy of one ignore-list search step: on the lowered model when x86 lowers
        (as its row would be measured), else on the eager graph. Not a row: only a choice."""
        from vitquant.evaluate import accuracy

        if self.lowers:
            from vitquant.quant.lowered import LoweredModel

            try:
                return accuracy(LoweredModel(qm), self.bundle, "val", self.spec)
            except Exception:  # no compiler, unsupported pattern: the emulation below
                pass
            finally:
                torch._dynamo.reset()
        return accuracy(qm.module, self.bundle, "val", self.spec)


def lowered_runner(graph: torch.fx.GraphModule, example: torch.Tensor, log: Callable[[str], None]):
    """``(LoweredModel or None, extra)`` for an x86 pt2e graph.

    ``extra`` holds ``accuracy_on`` and ``lowered_vs_eager_agreement`` - the share of
    ``example`` on which the lowered model's argmax equals the eager emulation's (the two
    compute the same int8 arithmetic up to rounding order) - or ``lowering_error`` when inductor
    cannot compile the graph (the caller then measures the emulation, ``simulated``).
    """
    from vitquant.quant.lowered import LoweredModel

    try:
        lowered = LoweredModel(graph)
        with torch.no_grad():
            agree = (lowered(example).argmax(1) == graph(example).argmax(1)).float().mean().item()
    except Exception as exc:  # no compiler, an unsupported pattern, ...
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        log(f"inductor could not lower this variant ({type(exc).__name__}): eager emulation")
        torch._dynamo.reset()
        return None, {"lowering_error": f"{type(exc).__name__}: {message}"}
    return lowered, {
        "accuracy_on": "inductor-lowered int8 kernels",
        "lowered_vs_eager_agreement": agree,
    }
