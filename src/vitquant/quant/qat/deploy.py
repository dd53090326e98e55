"""Deploy the kept QAT model and report it: ``.pt2``, ONNX (and ``.pte``), test-split rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.quant.configs import check_export
from vitquant.quant.qat.config import QATResult


def export_qdq_onnx(converted: nn.Module, example: torch.Tensor, path) -> Path:
    """Export the converted int8 graph to ONNX (QuantizeLinear/DequantizeLinear, dynamic batch).

    ONNX Runtime fuses the Q/DQ pairs around Conv/MatMul into integer kernels on x86.
    """
    import warnings

    from vitquant.io import atomic_write
    from vitquant.quant.onnx_backend import INPUT_NAME, OUTPUT_NAME

    dynamic = ({0: torch.export.Dim("batch", min=1, max=65536)},) if len(example) >= 2 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            converted,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            verbose=False,
        )
    return atomic_write(Path(path), lambda p: program.save(str(p), external_data=False))


@dataclass(frozen=True)
class DeployOptions:
    """What ``deploy_and_report`` saves and measures.

    Attributes:
        onnx: also export the int8 model to ONNX and evaluate it with ONNX Runtime.
        latency: time every row (x86 pt2e after inductor lowering; can take a minute).
        latency_batch: batch size of the timing.
        stem: file name stem of the artifacts.
        backend: the quantizer the model was trained with (``get_backend``): names the pt2e
            row, and its ``lower`` gives the runner measured (x86: inductor-lowered int8).
        export: ``pte``: also lower to an ExecuTorch XNNPACK program, run and measure it.
        bits: the low-bit setting the model was trained at (``QATConfig.bits_label``), or None
            for int8. A low-bit model is only emulated: its row is ``simulated`` and untimed
            (backend ``pt2e-lowbit``), and nothing is lowered or exported to ONNX / ``.pte``.
    """

    onnx: bool = True
    latency: bool = True
    latency_batch: int = 32
    stem: str = "qat_int8"
    backend: str = "x86"
    export: str = "none"
    bits: str | None = None

    def __post_init__(self) -> None:
        check_export(self.export, self.backend)
        if self.bits is not None and (self.onnx or self.export != "none"):
            raise VitquantError(
                f"a {self.bits} QAT model is simulated: no runtime has {self.bits} kernels, so "
                "it is not exported to ONNX or .pte; drop --export pte (and use --no-onnx)."
            )


def deploy_and_report(
    model: nn.Module,
    spec,
    bundle: DataBundle,
    result: QATResult,
    directory,
    *,
    ignored: Sequence[str] = (),
    options: DeployOptions = DeployOptions(),
    log: Callable[[str], None] = print,
) -> dict:
    """Save the kept int8 model (``.pt2`` and ``.onnx``) and measure it on the test split.

    Rows, built by one ``vitquant.measure.Measurer`` (role ``test``, timed at
    ``options.latency_batch`` with the threads in effect, which torchrun may have set):
    ``fp32``/pytorch; ``qat``/pt2e-<backend>, the converted graph measured on the runner
    ``Backend.lower`` returns (x86: inductor-lowered int8 kernels, ``extra.timed`` and
    ``extra.lowered_vs_eager_agreement``; else the eager emulation, ``simulated``);
    ``qat``/executorch-xnnpack (the backend's ``.pte``, ``options.export == "pte"``) and
    ``qat``/onnxruntime (the Q/DQ ONNX export), each with ``agreement_pt2e`` against the pt2e
    row (``extra.twin``); finalized against fp32.

    Returns:
        ``{"results": [row dicts], "artifacts": {...}, "test_acc": ..., "fp32_test_acc": ...,
        "int8_layers": [...], "float_layers": [...], "notes": [...]}``; ``test_acc`` is the
        pt2e row's accuracy.
    """
    from vitquant.evaluate import state_dict_bytes
    from vitquant.layers import quantizable_names
    from vitquant.measure import Candidate, Measurer
    from vitquant.quant.backends import get_backend
    from vitquant.quant.pt2e import QuantizedModel, split_int8

    directory = Path(directory)
    backend = get_backend(options.backend)
    notes: list[str] = []
    measurer = Measurer(
        bundle,
        spec,
        roles=("test",),
        latency_batches=(options.latency_batch,) if options.latency else (),
        latency_batch=options.latency_batch,
        threads=torch.get_num_threads(),  # keep the caller's (torchrun's) share of the cores
        progress=True,
        log=None,
    )
    example = next(bundle.batches("val", spec, batch_size=8))[0]
    int8_layers, float_layers = split_int8(model, result.converted)
    qm = QuantizedModel(result.converted, int8_layers, float_layers, list(ignored), example=example)

    measurer.measure(
        Candidate(
            "fp32",
            "pytorch",
            model.eval(),
            size_bytes=state_dict_bytes(model),
            float_layers=quantizable_names(model),
        )
    )

    label = backend.graph_label
    pt2 = backend.save(qm, directory / f"{options.stem}.pt2")
    probe = measurer.examples.get(options.latency_batch)
    if options.bits is not None:
        return _report_low_bit(measurer, qm, result, pt2, options.bits, log)
    lowered = backend.lower(qm.module, enabled=options.latency, probe=probe)
    if "lowering_error" in lowered.extra:
        notes.append(
            f"inductor lowering failed, eager emulation timed: {lowered.extra['lowering_error']}"
        )
    try:
        qrow = measurer.measure(
            Candidate(
                "qat",
                label,
                lowered.runner,
                artifact=pt2,
                int8_layers=int8_layers,
                float_layers=float_layers,
                ignored=ignored,
                simulated=lowered.simulated,
                extra={
                    "best_epoch": result.best_epoch,
                    "best_val_acc": result.best_val,
                    **lowered.extra,
                },
            )
        )
    finally:
        if lowered.runner is not qm.module:
            torch._dynamo.reset()  # free the compiled graphs
    artifacts = {"pt2": str(pt2), "onnx": None, "pte": None}

    if options.export in backend.exports:
        exported = backend.export(qm, directory / f"{options.stem}{backend.suffix}")
        if exported.note:
            notes.append(f"{backend.suffix}: {exported.note}")
        artifacts[options.export] = str(exported.path)
        _deployed(measurer, backend, exported.path, qm, twin=("qat", label), extra=exported.extra)

    if options.onnx:
        try:
            onnx_path = export_qdq_onnx(qm.module, example, directory / f"{options.stem}.onnx")
        except Exception as exc:  # an op the exporter cannot translate
            notes.append(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}")
        else:
            artifacts["onnx"] = str(onnx_path)
            ort = get_backend("onnxruntime")
            _deployed(measurer, ort, onnx_path, qm, twin=("qat", label))

    return _report(measurer, qrow, qm, artifacts, notes, log)


def _report(measurer, qrow, qm, artifacts: dict, notes: list[str], log) -> dict:
    """Finalize the rows against fp32, log them and return ``deploy_and_report``'s dict."""
    rows = measurer.finalize()
    for row in rows:
        log(
            f"{row.variant:5s} {row.backend:18s} test acc {row.accuracy:.4f} "
            f"(drop {row.drop_pts:+.2f} pts), {row.size_mb:.2f} MiB"
        )
    return {
        "results": [r.to_dict() for r in rows],
        "artifacts": artifacts,
        "test_acc": qrow.accuracy,
        "fp32_test_acc": rows[0].accuracy,
        "int8_layers": qm.int8_layers,
        "float_layers": qm.float_layers,
        "notes": notes,
    }


def _report_low_bit(measurer, qm, result: QATResult, pt2: Path, bits: str, log=print) -> dict:
    """The low-bit QAT row: the converted graph's eager emulation, simulated and untimed."""
    from vitquant.quant.lowbit.study import measure_simulated

    qrow = measure_simulated(
        measurer,
        "qat",
        qm.module,
        pt2,
        int8_layers=qm.int8_layers,
        float_layers=qm.float_layers,
        ignored=qm.ignored,
        extra={
            "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val,
            "config": {"bits": bits},
            "timed": "not timed: no CPU runtime has these bit widths (simulated)",
        },
    )
    notes = [f"{bits}: the QAT model is simulated (quantize/dequantize around float kernels)"]
    artifacts = {"pt2": str(pt2), "onnx": None, "pte": None}
    return _report(measurer, qrow, qm, artifacts, notes, log)


def _deployed(measurer, backend, path: Path, qm, *, twin: tuple[str, str], extra=None) -> None:
    """Load the artifact ``backend`` wrote at ``path`` and measure it against its ``twin``."""
    from vitquant.measure import Candidate

    measurer.measure(
        Candidate(
            "qat",
            backend.label,
            backend.load(path, threads=measurer.threads),
            runtime=backend.runtime,
            artifact=path,
            int8_layers=qm.int8_layers,
            float_layers=qm.float_layers,
            ignored=qm.ignored,
            twin=twin,
            extra=dict(extra or {}),
        )
    )
