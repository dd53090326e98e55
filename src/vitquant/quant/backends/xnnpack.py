"""xnnpack: ExecuTorch's ``XNNPACKQuantizer``, deployed as an XNNPACK ``.pte`` program.

The converted pt2e graph runs here only as the eager emulation (``simulated``: inductor's int8
fusions match the x86 quantizer's patterns, not these); its int8 kernels run in the ``.pte``
(``vitquant.quant.executorch_backend``), loaded by ExecuTorch's runtime (``PteModel``). Its
dynamic path is the quantizer's own dynamic config through pt2e (``quantize_dynamic_pt2e``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.backends.base import Backend, Exported


def require_executorch() -> None:
    """A ``VitquantError`` with the install command when ExecuTorch is missing."""
    try:
        import executorch  # noqa: F401
    except ImportError as exc:
        raise VitquantError(
            "--quantizer xnnpack needs ExecuTorch: pip install executorch==1.5.1 "
            "(`make setup` installs it)."
        ) from exc


def xnnpack_config(
    *,
    per_channel: bool = True,
    symmetric_activations: bool = False,
    observer: str = "histogram",
    percentile: float = 99.99,
    is_qat: bool = False,
    is_dynamic: bool = False,
):
    """ExecuTorch's ``get_symmetric_quantization_config`` (the XNNPACK recipe of the study).

    Weights: int8 symmetric in [-127, 127], per output channel or per tensor. Activations: int8
    affine in [-128, 127] with a ``HistogramObserver`` (static), fake-quant (QAT) or run-time
    ranges (dynamic). A static ``observer`` other than ``histogram`` swaps the activation
    observer only; ``symmetric_activations`` pins the activation zero point to 0.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        get_symmetric_quantization_config,
    )

    from vitquant.quant.observers import observer_class

    config = get_symmetric_quantization_config(
        is_per_channel=per_channel, is_qat=is_qat, is_dynamic=is_dynamic
    )
    changes: dict = {}
    if observer != "histogram" and not (is_qat or is_dynamic):
        obs_cls, obs_kw = observer_class(observer, percentile)
        changes["observer_or_fake_quant_ctr"] = obs_cls.with_args(eps=2**-12, **obs_kw)
    if symmetric_activations:
        changes["qscheme"] = torch.per_tensor_symmetric
    if changes:
        act = dataclasses.replace(config.input_activation, **changes)
        out = config.output_activation
        config = dataclasses.replace(
            config,
            input_activation=act,
            output_activation=dataclasses.replace(out, **changes) if out is not None else None,
        )
    return config


class XnnpackBackend(Backend):
    name = "xnnpack"
    label = "executorch-xnnpack"
    runtime = "executorch"
    suffix = ".pte"
    default_observer = "histogram"  # as in ExecuTorch's symmetric config
    exports = ("pte",)
    dynamic_label = "pt2e-xnnpack"

    def make_quantizer(self, ignore: list[str], *, default_bits=None, layer_bits=None, **options):
        """ExecuTorch's ``XNNPACKQuantizer`` with ``xnnpack_config(**options)``.

        ``XNNPACKQuantizer.set_module_name(name, None)`` is not supported (it asserts), so the
        ignore list goes through its documented ``set_filter_function``: a node inside an
        ignored module (torchao's ``get_module_name_filter``) is not annotated and stays in
        float - what ``set_module_name_qconfig(name, None)`` does on the x86 quantizer.
        ``default_bits`` / ``layer_bits`` narrow the ranges as on x86 (``lowbit.narrow``).
        """
        require_executorch()
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
        from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

        from vitquant.quant.lowbit.narrow import narrow_config

        config = xnnpack_config(**options)
        quantizer = XNNPACKQuantizer()
        quantizer.set_global(narrow_config(config, default_bits) if default_bits else config)
        for name, setting in (layer_bits or {}).items():
            quantizer.set_module_name(name, narrow_config(config, setting))
        if ignore:
            filters = [get_module_name_filter(name) for name in ignore]
            quantizer.set_filter_function(lambda node: not any(f(node) for f in filters))
        return quantizer

    @contextlib.contextmanager
    def tracing(self, model: nn.Module) -> Iterator[int]:
        """Trace timm attention through its explicit ``q @ k^T -> softmax -> @ v`` path instead
        of fused SDPA; yields the number of blocks switched.

        The math is the same, but SDPA's decomposition adds -inf masking ops (``eq``,
        ``logical_not``, ``any``, ``where``, ``full_like``) that XNNPACK does not lower: on
        ``cifar_vit`` they left 72 portable ops per image and doubled the ``.pte`` latency.
        """
        from vitquant.analysis.hooks import attention_modules, unfused_attention

        with unfused_attention(model):
            yield len(attention_modules(model))

    def export(self, qm, path: str | Path, *, max_batch: int | None = None, **context) -> Exported:
        """Lower ``qm``'s graph to an XNNPACK ``.pte`` (``export_pte``; ``max_batch``: the
        largest batch one call takes, None: its default); ``extra.lowering`` is what lowered
        and which operators were left to portable kernels."""
        from vitquant.quant.executorch_backend import export_pte

        kw = {} if max_batch is None else {"max_batch": max_batch}
        pte = export_pte(qm.module, qm.example, path, **kw)
        return Exported(
            path=pte.path,
            int8_layers=list(qm.int8_layers),
            float_layers=list(qm.float_layers),
            ignored=list(qm.ignored),
            extra={"lowering": pte.to_dict(), "int8": list(qm.int8_layers)},
            note=pte.note(),
        )

    def load(self, path: str | Path, *, threads: int | None = None):
        """The ``.pte`` in ExecuTorch's runtime, XNNPACK pool of ``threads``."""
        from vitquant.quant.executorch_backend import PteModel

        return PteModel(path, threads=threads)

    def quantize_dynamic(self, model, *, example, cfg=None, per_channel=True, ignore=()):
        """The quantizer's dynamic config through pt2e (``quantize_dynamic_pt2e``)."""
        from vitquant.quant.dynamic import quantize_dynamic_pt2e

        return quantize_dynamic_pt2e(
            model, example, backend=self.name, per_channel=per_channel, ignore=ignore
        )
