"""Quantization backends behind one interface (``base.Backend``), by name.

``get_backend("x86")`` -> torchao's ``X86InductorQuantizer`` lowered by inductor (``.pt2``);
``"xnnpack"`` -> ExecuTorch's ``XNNPACKQuantizer`` deployed as an XNNPACK ``.pte``;
``"onnxruntime"`` -> ONNX Runtime's QDQ static / dynamic int8 of the fp32 ONNX export;
``"openvino"`` -> NNCF's static int8 of the float model, run by OpenVINO's CPU plugin (``.xml``).

A new backend is one file with a ``Backend`` subclass and one ``register(...)`` line below.
"""

from __future__ import annotations

from vitquant.errors import VitquantError
from vitquant.quant.backends.base import Backend, Exported, Lowered
from vitquant.quant.backends.onnxruntime import OnnxRuntimeBackend
from vitquant.quant.backends.openvino import OpenVinoBackend
from vitquant.quant.backends.x86 import X86Backend
from vitquant.quant.backends.xnnpack import XnnpackBackend

BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry under ``backend.name`` (a duplicate name is an error)."""
    if backend.name in BACKENDS:
        raise VitquantError(f"backend {backend.name!r} is already registered.")
    BACKENDS[backend.name] = backend
    return backend


register(X86Backend())
register(XnnpackBackend())
register(OnnxRuntimeBackend())
register(OpenVinoBackend())


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``, else a ``VitquantError`` listing them."""
    if name not in BACKENDS:
        raise VitquantError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    return BACKENDS[name]


def quantizers() -> tuple[str, ...]:
    """Names of the backends with a pt2e quantizer (the ``--quantizer`` choices)."""
    return tuple(name for name, b in BACKENDS.items() if b.pt2e)


def backend_for_label(label: str) -> Backend | None:
    """The backend whose rows carry ``label`` (``pt2e-x86``, ``executorch-xnnpack``, ...);
    None for ``pytorch`` rows (the float model and PyTorch's eager dynamic int8)."""
    return next((b for b in BACKENDS.values() if label in b.labels()), None)


__all__ = [
    "BACKENDS",
    "Backend",
    "Exported",
    "Lowered",
    "backend_for_label",
    "get_backend",
    "quantizers",
    "register",
]
