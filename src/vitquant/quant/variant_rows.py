"""Each variant of ``run_variants`` saved and measured: its PyTorch row and its deployed twins.

``VariantRows`` turns a float model or a quantized one (``QuantizedModel``) into the
``Candidate`` s the one ``Measurer`` measures, through the backend registry:

- the PyTorch row: the artifact ``Backend.save`` writes (``.pt2``, or ``.pt`` for eager dynamic)
  and the runner ``Backend.lower`` returns (x86: the inductor-compiled int8 graph, measured and
  timed; else the eager emulation, ``simulated``);
- the deployment row of ``--export`` (``Backend.export`` then ``Backend.load``: the XNNPACK
  ``.pte`` in ExecuTorch's runtime);
- the ONNX Runtime twin (``--onnx``): the fp32 ONNX export quantized with the same recipe;
- the OpenVINO twin (``--openvino``, static variants): the float model quantized by NNCF on the
  same calibration images and ignore list, run by OpenVINO's CPU plugin.

Deployed rows name the PyTorch row they were made from (``Candidate.twin``), so the measurer
records ``agreement_pt2e``, their top-1 agreement with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.layers import quantizable_names
from vitquant.measure import Candidate, Measurer
from vitquant.quant.artifacts import save_state_dict
from vitquant.quant.backends import Backend, get_backend


def float_row(backend: Backend, measurer: Measurer, model: nn.Module, example, artifacts: Path):
    """The ``fp32`` row of a deployment runtime: ``model`` exported by ``backend`` to
    ``artifacts/fp32<suffix>``, loaded back and measured (the reference its int8 rows' speedup
    is taken against). Returns what ``Backend.export_float`` returned."""
    exported = backend.export_float(model, example, artifacts / f"fp32{backend.suffix}")
    path = getattr(exported, "path", exported)  # ONNX Runtime: an ``OnnxFloat``; else the path
    measurer.measure(
        Candidate(
            "fp32",
            backend.label,
            backend.load(path, threads=measurer.threads),
            runtime=backend.runtime,
            artifact=path,
            float_layers=quantizable_names(model),
        )
    )
    return exported


@dataclass
class VariantRows:
    """Saves and measures the variants of one quantize run (see the module docstring).

    Attributes:
        backend: the pt2e quantizer's backend (``job.static.backend``).
        measurer: measures every row, on the same data, batches and threads.
        artifacts: folder of the saved models.
        bundle, spec: the data (ONNX Runtime calibrates on ``calib``) and the model's spec.
        lower: let the backend compile graphs to int8 kernels (``Backend.lower``).
        export: ``--export`` value (``none``, or one of ``backend.exports``).
        onnx: add ONNX Runtime twins.
        openvino: add OpenVINO twins of the static variants (and its fp32 row).
        notes: remarks of the run (lowering reports and failures are appended).
    """

    backend: Backend
    measurer: Measurer
    artifacts: Path
    bundle: object
    spec: object
    lower: bool = True
    export: str = "none"
    onnx: bool = True
    openvino: bool = False
    notes: list[str] = field(default_factory=list)
    source: object = None  # the fp32 ONNX export (``OnnxFloat``), once made
    float_model: nn.Module | None = None  # what the OpenVINO twins are quantized from

    @property
    def ov(self) -> Backend:
        return get_backend("openvino")

    @property
    def ort(self) -> Backend:
        return get_backend("onnxruntime")

    def fp32(self, model: nn.Module) -> None:
        """The float model (``fp32.pt``) and, with ``onnx``, its ONNX export in ONNX Runtime."""
        names = quantizable_names(model)
        path = save_state_dict(model, self.artifacts / "fp32.pt")
        self.float_model = model
        self.measurer.measure(
            Candidate("fp32", "pytorch", model.eval(), artifact=path, float_layers=names)
        )
        example = next(self.bundle.batches("calib", self.spec, batch_size=4))[0]
        if self.openvino:
            float_row(self.ov, self.measurer, model, example, self.artifacts)
        if self.onnx:
            self.source = float_row(self.ort, self.measurer, model, example, self.artifacts)

    def quantized(self, qm, variant: str, *, dynamic: bool = False, extra: dict | None = None):
        """``qm``'s PyTorch row, then its ``--export`` row and its ONNX Runtime twin.

        Args:
            qm: the ``QuantizedModel`` (pt2e graph, or PyTorch's eager dynamic model).
            variant: the row's variant (``static``, ``dynamic``, ...), also the file stem.
            dynamic: a dynamic int8 model (row label ``backend.dynamic_label``).
            extra: more details for the PyTorch row (e.g. ``auto``).
        """
        backend = self.backend
        label = backend.dynamic_label if dynamic else backend.graph_label
        path = backend.save(qm, self.artifacts / variant)
        examples = self.measurer.examples
        probe = examples[max(examples)] if examples else None
        lowered = backend.lower(qm.module, enabled=self.lower, probe=probe)
        if "lowering_error" in lowered.extra:
            self.notes.append(
                f"{variant}: inductor lowering failed, eager emulation timed "
                f"({lowered.extra['lowering_error']})"
            )
        config = qm.config.to_dict() if hasattr(qm.config, "to_dict") else qm.config
        details = {"config": config, "int8": list(qm.int8_layers), "float": list(qm.float_layers)}
        self.measurer.measure(
            Candidate(
                variant,
                label,
                lowered.runner,
                runtime="pytorch",
                artifact=path,
                int8_layers=qm.int8_layers,
                float_layers=qm.float_layers,
                ignored=qm.ignored,
                simulated=lowered.simulated,
                extra={**details, **lowered.extra, **(extra or {})},
            )
        )
        if lowered.runner is not qm.module:
            torch._dynamo.reset()  # free this variant's compiled graphs
        if self.export in backend.exports:
            self.deployed(backend, qm, variant, twin=(variant, label))
        if self.source is not None:
            self.deployed(
                self.ort,
                qm,
                variant,
                twin=(variant, label),
                source=self.source,
                bundle=self.bundle,
                spec=self.spec,
            )
        if self.openvino and not dynamic and self.float_model is not None:
            try:
                self.deployed(
                    self.ov,
                    qm,
                    variant,
                    twin=(variant, label),
                    model=self.float_model,
                    bundle=self.bundle,
                    spec=self.spec,
                )
            except VitquantError as exc:  # e.g. layers OpenVINO renamed: a note, not a row
                self.notes.append(f"{variant}: no OpenVINO twin: {exc}")

    def deployed(self, backend: Backend, qm, variant: str, *, twin, **context) -> None:
        """Export ``qm`` with ``backend``, load the artifact back and measure that."""
        exported = backend.export(qm, self.artifacts / f"{variant}{backend.suffix}", **context)
        if exported.note:
            self.notes.append(f"{variant} {backend.suffix}: {exported.note}")
        self.measurer.measure(
            Candidate(
                variant,
                backend.label,
                backend.load(exported.path, threads=self.measurer.threads),
                runtime=backend.runtime,
                artifact=exported.path,
                int8_layers=exported.int8_layers,
                float_layers=exported.float_layers,
                ignored=exported.ignored,
                twin=twin,
                extra=exported.extra,
            )
        )
