"""The interface every quantization backend implements (see ``vitquant.quant.backends``).

A backend answers, for one target, the questions the quantize / bench / qat code used to ask
with ``if backend == "xnnpack"``: which pt2e quantizer annotates the graph (``make_quantizer``)
and how the graph is traced for it (``tracing``); which runner is timed and measured for a
converted graph (``lower``: inductor's int8 kernels, or the eager emulation, ``simulated``);
which deployment artifact it writes and how that is loaded back (``export`` / ``load``); what
its dynamic int8 path is (``quantize_dynamic``); and the row ``label`` / ``runtime`` of what it
deploys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from vitquant.errors import VitquantError


@dataclass
class Lowered:
    """The runner of a converted graph that is timed and measured.

    Attributes:
        runner: ``x -> logits``: a compiled int8 graph, or the graph itself.
        simulated: the runner emulates int8 (quantize/dequantize around float kernels).
        extra: details for the row's ``extra``: ``timed`` (what ran), ``lowering_error``,
            ``lowered_vs_eager_agreement``.
    """

    runner: Callable[[torch.Tensor], torch.Tensor]
    simulated: bool
    extra: dict = field(default_factory=dict)


@dataclass
class Exported:
    """A deployment artifact written by ``Backend.export``.

    Attributes:
        path: the file.
        int8_layers, float_layers, ignored: module names as the artifact holds them.
        extra: details for the row's ``extra`` (lowering report, quantization mode, ...).
        note: one line for the run's notes (None: nothing to say).
    """

    path: Path
    int8_layers: list[str]
    float_layers: list[str]
    ignored: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    note: str | None = None


class Backend:
    """One quantization backend. Subclasses set the class attributes and override methods.

    Attributes:
        name: registry key; for pt2e backends also the ``--quantizer`` value.
        label: the row ``backend`` of the artifact ``export`` writes.
        runtime: what executes that artifact (one of ``vitquant.results.RUNTIMES``).
        suffix: the artifact's file suffix.
        pt2e: has a pt2e quantizer (``make_quantizer``); ``label`` of its converted graph rows
            is ``graph_label``.
        default_observer: activation observer of its static recipe when none is given.
        exports: ``--export`` values that add a deployment row after each pt2e row.
        lowers: ``lower`` compiles graphs to int8 kernels (else it times the emulation).
        dynamic_label: the row ``backend`` of its dynamic int8 variant.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    runtime: ClassVar[str] = "pytorch"
    suffix: ClassVar[str]
    pt2e: ClassVar[bool] = True
    default_observer: ClassVar[str] = "minmax"
    exports: ClassVar[tuple[str, ...]] = ()
    lowers: ClassVar[bool] = False
    dynamic_label: ClassVar[str]

    @property
    def graph_label(self) -> str | None:
        """Row ``backend`` of this quantizer's converted pt2e graphs (None: not pt2e)."""
        return f"pt2e-{self.name}" if self.pt2e else None

    def labels(self) -> tuple[str, ...]:
        """Every row ``backend`` whose artifact this backend reloads."""
        return tuple(dict.fromkeys(x for x in (self.graph_label, self.label) if x))

    # -- what is quantized (pt2e) -------------------------------------------------------------

    def make_quantizer(self, ignore: list[str], *, default_bits=None, layer_bits=None, **options):
        """A pt2e ``Quantizer`` keeping ``ignore`` modules unannotated (float).

        ``options``: ``per_channel``, ``symmetric_activations``, ``observer``, ``percentile``,
        ``is_qat``, ``is_dynamic`` (see ``vitquant.quant.pt2e.make_quantizer``).
        ``default_bits`` / ``layer_bits``: ``BitSetting`` narrowing, global and per layer.
        """
        raise VitquantError(f"{self.name} has no pt2e quantizer.")

    @contextlib.contextmanager
    def tracing(self, model: nn.Module) -> Iterator[int]:
        """Context around ``torch.export`` of ``model`` for this quantizer; yields the number of
        modules traced differently (0: none)."""
        yield 0

    # -- how a converted graph runs -------------------------------------------------------------

    def lower(
        self,
        graph: Callable[[torch.Tensor], torch.Tensor],
        *,
        enabled: bool = True,
        probe: torch.Tensor | None = None,
    ) -> Lowered:
        """The runner of a converted graph to time and measure (default: the eager emulation).

        Args:
            graph: the converted graph (or, for a dynamic eager model, the model).
            enabled: False: never compile (the emulation is timed, ``simulated``).
            probe: an input batch to compile for and to compare lowered with eager on.
        """
        timed = "eager quantize/dequantize emulation"
        if enabled:
            timed += f" (inductor's int8 patterns are not the {self.name} quantizer's)"
        return Lowered(runner=graph, simulated=True, extra={"timed": timed})

    # -- deployment artifact -------------------------------------------------------------------

    def export(self, qm, path: str | Path, **context) -> Exported:
        """Write the deployment artifact of the quantized model ``qm`` to ``path``.

        ``context`` holds what some backends need beyond ``qm`` (ONNX Runtime: ``source``,
        the float ONNX export, ``bundle`` and ``spec`` for calibration).
        """
        raise NotImplementedError

    def load(self, path: str | Path, *, threads: int | None = None):
        """The artifact at ``path`` (as ``export`` wrote it) as an ``x -> logits`` runner."""
        raise NotImplementedError

    def load_graph(self, path: str | Path) -> torch.fx.GraphModule:
        """A saved converted pt2e graph (``.pt2``, the ``graph_label`` rows' artifact)."""
        from vitquant.quant.artifacts import load_pt2e

        return load_pt2e(path)

    # -- dynamic int8 --------------------------------------------------------------------------

    def quantize_dynamic(
        self,
        model: nn.Module,
        *,
        example: torch.Tensor,
        cfg=None,
        per_channel: bool = True,
        ignore: Iterable[str] = (),
    ):
        """Dynamic int8 of ``model``: a ``QuantizedModel`` whose row is ``dynamic_label``."""
        raise VitquantError(f"{self.name} has no dynamic int8 path.")

    def save(self, qm, path: str | Path) -> Path:
        """Save the PyTorch side of ``qm`` (a converted pt2e graph: ``.pt2``); returns the
        file, whose suffix the backend may choose."""
        from vitquant.quant.artifacts import save_pt2e

        return save_pt2e(qm.module, qm.example, Path(path).with_suffix(".pt2"))

    def __repr__(self) -> str:
        return f"<backend {self.name}: {self.label} ({self.runtime}, {self.suffix})>"
