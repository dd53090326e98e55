"""onnxruntime: ONNX Runtime's QDQ static or dynamic int8 of the fp32 ONNX export.

ONNX Runtime has no pt2e quantizer: it mirrors a PyTorch variant. ``export(qm, path,
source=..., bundle=..., spec=...)`` quantizes the float export (``source``, from
``export_float``) with ``qm``'s recipe - ``quantize_onnx_static`` (calibrated on ``calib``) when
``qm.config`` is a ``StaticPTQ``, else ``quantize_onnx_dynamic`` (its dynamic path) - restricted to
the layers ``qm`` made int8 and keeping ``qm.ignored`` in float. ``load`` opens the file in an
ONNX Runtime CPU session (``OrtModel``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.backends.base import Backend, Exported


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    label = "onnxruntime"
    runtime = "onnxruntime"
    suffix = ".onnx"
    pt2e = False
    default_observer = "minmax"
    dynamic_label = "onnxruntime"

    def export_float(self, model: nn.Module, example: torch.Tensor, path: str | Path):
        """The fp32 ONNX export (``OnnxFloat``: file + module -> node names) every int8 ONNX
        model is quantized from."""
        from vitquant.quant.onnx_backend import export_onnx

        return export_onnx(model, example, path)

    def export(
        self,
        qm,
        path: str | Path,
        *,
        source=None,
        model: nn.Module | None = None,
        bundle=None,
        spec=None,
        **context,
    ) -> Exported:
        """Quantize the float ONNX export as ``qm`` was quantized (see the module docstring).

        Args:
            qm: the PyTorch ``QuantizedModel`` to mirror (recipe, int8 and ignored layers).
            path: the int8 ``.onnx`` to write.
            source: the ``OnnxFloat`` export (None: exported from ``model`` beside ``path``).
            model: the float model (only when ``source`` is None).
            bundle, spec: calibration data of a static recipe.
        """
        from vitquant.quant.configs import StaticPTQ
        from vitquant.quant.onnx_backend import quantize_onnx_dynamic, quantize_onnx_static

        path = Path(path)
        if source is None:
            if model is None or qm.example is None:
                raise VitquantError("an ONNX Runtime export needs the fp32 ONNX or the model.")
            source = self.export_float(model, qm.example, path.with_name("fp32.onnx"))
        cfg = qm.config
        if isinstance(cfg, StaticPTQ):
            if bundle is None or spec is None:
                raise VitquantError("a static ONNX Runtime export needs calibration data.")
            oq = quantize_onnx_static(
                source,
                bundle,
                spec,
                path,
                ignore=qm.ignored,
                modules=qm.int8_layers,
                per_channel=cfg.per_channel,
                symmetric_activations=cfg.symmetric_activations,
                observer=cfg.observer,
                percentile=cfg.percentile,
                calib=cfg.calib,
                calib_batch=cfg.calib_batch,
            )
        else:  # a dynamic recipe: int8 weights, activation ranges per batch
            oq = quantize_onnx_dynamic(source, path, modules=qm.int8_layers)
        return Exported(
            path=oq.path,
            int8_layers=oq.int8_layers,
            float_layers=oq.float_layers,
            ignored=oq.ignored,
            extra={"mode": oq.mode, "int8": oq.int8_layers, "excluded_nodes": oq.excluded_nodes},
        )

    def load(self, path: str | Path, *, threads: int | None = None):
        """An ONNX Runtime CPU session (``OrtModel``) with ``threads`` intra-op threads."""
        from vitquant.quant.onnx_backend import OrtModel

        return OrtModel(path, threads=threads)
