"""openvino: the float model quantized by NNCF and run by OpenVINO's CPU plugin (``.xml`` IR).

Like ONNX Runtime it has no pt2e quantizer: it mirrors a PyTorch static variant. ``export(qm,
path, model=..., bundle=..., spec=...)`` converts the float ``model``, quantizes it with NNCF's
static PTQ on ``qm.config``'s calibration images, restricted by ``qm.ignored`` (kept float), and
saves the IR; the int8 layers are read back from the quantized model
(``vitquant.quant.openvino_backend``). NNCF chooses its own recipe (for a model with attention,
its transformer recipe, which also quantizes the attention matmuls), so the twin need not hold
exactly the PyTorch row's int8 layers. ``load`` compiles the IR for the CPU (``OvModel``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.backends.base import Backend, Exported


class OpenVinoBackend(Backend):
    name = "openvino"
    label = "openvino"
    runtime = "openvino"
    suffix = ".xml"
    pt2e = False
    default_observer = "minmax"
    dynamic_label = "openvino"

    def export(
        self,
        qm,
        path: str | Path,
        *,
        model: nn.Module | None = None,
        bundle=None,
        spec=None,
        **context,
    ) -> Exported:
        """NNCF static int8 of the float ``model``, calibrated like ``qm`` (see the module
        docstring); ``qm`` must be a static variant."""
        from vitquant.layers import quantizable_names
        from vitquant.quant.configs import StaticPTQ
        from vitquant.quant.openvino_backend import quantize_openvino

        cfg = qm.config
        if not isinstance(cfg, StaticPTQ):
            raise VitquantError("the OpenVINO twin mirrors static variants only.")
        if model is None or bundle is None or spec is None:
            raise VitquantError("an OpenVINO export needs the float model and calibration data.")
        oq = quantize_openvino(
            model,
            bundle,
            spec,
            path,
            modules=quantizable_names(model),
            ignore=qm.ignored,
            calib=cfg.calib,
            calib_batch=cfg.calib_batch,
        )
        return Exported(
            path=oq.path,
            int8_layers=oq.int8_layers,
            float_layers=oq.float_layers,
            ignored=oq.ignored,
            extra={
                "int8": oq.int8_layers,
                "float": oq.float_layers,
                "config": {"nncf_model_type": oq.model_type, "calib": oq.calib_images},
            },
        )

    def export_float(self, model: nn.Module, example, path: str | Path) -> Path:
        """The float model as OpenVINO IR (the same runtime's fp32 reference)."""
        from vitquant.quant.openvino_backend import convert, save_ir

        return save_ir(convert(model, example), Path(path))

    def load(self, path: str | Path, *, threads: int | None = None):
        """The IR compiled for the CPU (``OvModel``) with ``threads`` inference threads."""
        from vitquant.quant.openvino_backend import OvModel

        return OvModel(path, threads=threads)
