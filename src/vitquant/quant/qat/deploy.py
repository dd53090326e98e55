"""Deploy the kept QAT model and report it: ``.pt2``, ONNX (and ``.pte``), test-split rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.evaluate import accuracy
from vitquant.quant.configs import check_export
from vitquant.quant.lowered import inductor_lowers
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
        backend: the quantizer the model was trained with (names the pt2e row; only ``x86``
            graphs are lowered by inductor, others are timed as the eager emulation).
        export: ``pte``: also lower to an ExecuTorch XNNPACK program, run and measure it.
    """

    onnx: bool = True
    latency: bool = True
    latency_batch: int = 32
    stem: str = "qat_int8"
    backend: str = "x86"
    export: str = "none"

    def __post_init__(self) -> None:
        check_export(self.export, self.backend)


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

    Rows (``vitquant.results.ResultRow``): ``fp32``/pytorch, ``qat``/pt2e-<backend> (the
    converted graph; x86 timed after inductor lowering), ``qat``/executorch-xnnpack (the
    ``.pte`` program, ``options.export == "pte"``) and ``qat``/onnxruntime (the ONNX export),
    finalized against fp32.

    Returns:
        ``{"results": [row dicts], "artifacts": {...}, "test_acc": ..., "fp32_test_acc": ...,
        "notes": [...]}``.
    """
    from vitquant.evaluate import count_layers, example_batch, file_size_mb, state_dict_size_mb
    from vitquant.quant.artifacts import lowered_latency, measure_latency, save_pt2e
    from vitquant.quant.pt2e import split_int8
    from vitquant.results import ResultRow, finalize

    directory = Path(directory)
    converted = result.converted
    notes: list[str] = []
    threads = torch.get_num_threads()
    example = next(bundle.batches("val", spec, batch_size=8))[0]
    lat_x = {options.latency_batch: example_batch(bundle, spec, options.latency_batch)}

    def timed(row: ResultRow, lat: dict[int, float] | None) -> ResultRow:
        if lat:
            row.latency_ms_per_image = lat[options.latency_batch]
            row.latency_batch, row.latency_threads = options.latency_batch, threads
        return row

    n_test = len(bundle.test_idx)
    fp32_acc = accuracy(model, bundle, "test", spec, progress="test fp32")
    fp32 = ResultRow(
        "fp32",
        "pytorch",
        fp32_acc,
        n_test,
        int8_layers=0,
        float_layers=count_layers(model),
        size_mb=state_dict_size_mb(model),
    )
    timed(fp32, measure_latency(model.eval(), lat_x) if options.latency else None)

    pt2 = save_pt2e(converted, example, directory / f"{options.stem}.pt2")
    int8_layers, float_layers = split_int8(model, converted)
    q_acc = accuracy(converted, bundle, "test", spec, progress="test int8")
    qrow = ResultRow(
        "qat",
        f"pt2e-{options.backend}",
        q_acc,
        n_test,
        int8_layers=len(int8_layers),
        float_layers=len(float_layers),
        size_mb=file_size_mb(pt2),
        ignored=list(ignored),
        artifact=str(pt2),
        simulated=True,
        extra={"best_epoch": result.best_epoch, "best_val_acc": result.best_val},
    )
    if options.latency and inductor_lowers(options.backend):
        lat, simulated, error, agree = lowered_latency(converted, lat_x)
        timed(qrow, lat)
        qrow.simulated = simulated
        qrow.extra["lowered_agreement"] = agree
        if error:
            notes.append(f"inductor lowering failed, eager emulation timed: {error}")
    elif options.latency:
        timed(qrow, measure_latency(converted, lat_x))
    rows = [fp32, qrow]
    artifacts = {"pt2": str(pt2), "onnx": None, "pte": None}

    if options.export == "pte":
        from vitquant.quant.executorch_backend import BACKEND, PteModel, export_pte

        exported = export_pte(converted, example, directory / f"{options.stem}.pte")
        notes.append(f".pte: {exported.note()}")
        artifacts["pte"] = str(exported.path)
        runner = PteModel(exported.path, threads=threads)
        logits, labels = predict_fn(runner, bundle, spec)
        ref_logits, _ = predict_fn(converted, bundle, spec)
        erow = ResultRow(
            "qat",
            BACKEND,
            (logits.argmax(1) == labels).float().mean().item(),
            n_test,
            int8_layers=len(int8_layers),
            float_layers=len(float_layers),
            size_mb=file_size_mb(exported.path),
            ignored=list(ignored),
            artifact=str(exported.path),
            extra={
                "lowering": exported.to_dict(),
                "runtime_threads": runner.threads,
                "pred_agreement_vs_pt2e": (logits.argmax(1) == ref_logits.argmax(1))
                .float()
                .mean()
                .item(),
            },
        )
        erow.extra["vs_pytorch_pts"] = round((erow.accuracy - q_acc) * 100, 4)
        timed(erow, measure_latency(runner, lat_x) if options.latency else None)
        rows.append(erow)

    if options.onnx:
        from vitquant.quant.onnx_backend import OrtModel

        try:
            onnx_path = export_qdq_onnx(converted, example, directory / f"{options.stem}.onnx")
        except Exception as exc:  # an op the exporter cannot translate
            notes.append(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}")
        else:
            artifacts["onnx"] = str(onnx_path)
            ort_model = OrtModel(onnx_path, threads=threads)
            logits, labels = predict_fn(ort_model, bundle, spec)
            ref_logits, _ = predict_fn(converted, bundle, spec)
            agree = (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
            ort_acc = (logits.argmax(1) == labels).float().mean().item()
            orow = ResultRow(
                "qat",
                "onnxruntime",
                ort_acc,
                n_test,
                int8_layers=len(int8_layers),
                float_layers=len(float_layers),
                size_mb=file_size_mb(onnx_path),
                ignored=list(ignored),
                artifact=str(onnx_path),
                extra={"pred_agreement_vs_pt2e": agree},
            )
            timed(orow, measure_latency(ort_model, lat_x) if options.latency else None)
            rows.append(orow)
    finalize(rows)
    for row in rows:
        log(
            f"{row.variant:5s} {row.backend:18s} test acc {row.accuracy:.4f} "
            f"(drop {row.drop_pts:+.2f} pts), {row.size_mb:.2f} MiB"
        )
    return {
        "results": [r.to_dict() for r in rows],
        "artifacts": artifacts,
        "test_acc": q_acc,
        "fp32_test_acc": fp32_acc,
        "int8_layers": int8_layers,
        "float_layers": float_layers,
        "notes": notes,
    }


def predict_fn(fn, bundle: DataBundle, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-split logits and labels of any callable model (ONNX Runtime sessions included)."""
    from vitquant.evaluate import predict

    return predict(fn, bundle, "test", spec)
