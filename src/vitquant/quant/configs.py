"""One frozen dataclass per quantization recipe; the CLI only builds these and calls the library."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vitquant.errors import VitquantError
from vitquant.quant.backends import BACKENDS, get_backend, quantizers

OBSERVERS = ("minmax", "moving_average", "histogram", "percentile")


def exports() -> tuple[str, ...]:
    """``--export`` values: ``none`` and every extra artifact a backend writes (``pte``)."""
    return ("none", *dict.fromkeys(e for b in BACKENDS.values() for e in b.exports))


def check_backend(backend: str) -> str:
    """``backend`` if it is a registered pt2e quantizer, else a ``VitquantError`` listing them."""
    if backend not in quantizers():
        raise VitquantError(
            f"unknown quantizer {backend!r}; choose one of {', '.join(quantizers())}."
        )
    return backend


def check_export(export: str, backend: str) -> str:
    """``export`` if it is known and fits ``backend``, else a ``VitquantError`` with the fix."""
    if export not in exports():
        raise VitquantError(f"unknown --export {export!r}; choose one of {', '.join(exports())}.")
    if export != "none" and export not in BACKENDS[check_backend(backend)].exports:
        owners = [b for b in BACKENDS.values() if export in b.exports]
        raise VitquantError(
            f"--export {export} writes the {owners[0].label} program, which expects the "
            f"{owners[0].name} quantizer's int8 graph; add --quantizer {owners[0].name} "
            f"(got --quantizer {backend})."
        )
    return export


def check_calibration(cfg) -> None:
    """The calibration fields a static recipe shares (``percentile``, ``calib``,
    ``calib_batch``): a ``VitquantError`` naming the bad one."""
    if not 50.0 < cfg.percentile <= 100.0:
        raise VitquantError(f"percentile must be in (50, 100], got {cfg.percentile}.")
    if cfg.calib is not None and cfg.calib <= 0:
        raise VitquantError(f"--calib must be > 0 images (got {cfg.calib}).")
    if cfg.calib_batch <= 0:
        raise VitquantError(f"calibration batch size must be > 0 (got {cfg.calib_batch}).")


@dataclass(frozen=True)
class StaticPTQ:
    """Static post-training quantization with torchao's pt2e flow.

    Attributes:
        backend: pt2e quantizer: ``x86`` (torchao's ``X86InductorQuantizer``, for inductor on
            x86) or ``xnnpack`` (ExecuTorch's ``XNNPACKQuantizer``, the edge/mobile path).
        per_channel: int8 weights with one scale per output channel (else one per tensor).
        symmetric_activations: activations with zero point 0 instead of the backend's
            default asymmetric ones (x86: uint8 -> int8 symmetric; xnnpack: int8 either way).
        observer: activation range estimator (None: the backend's default, ``minmax`` for x86
            and ``histogram`` for xnnpack as in ExecuTorch's symmetric config): ``minmax``
            (running min/max), ``moving_average``
            (EMA of per-batch min/max), ``histogram`` (torch's L2-error-minimising histogram
            search) or ``percentile`` (mean of per-batch ``percentile``/``100-percentile``).
        percentile: upper percentile of the ``percentile`` observer.
        calib: calibration images from the ``calib`` role (None: all of it).
        calib_batch: calibration batch size.
        int8_attention: x86 only: also quantize the attention matmuls of timm ViT blocks and
            lower them to torchao's fused int8 attention kernel on AMX CPUs
            (``vitquant.quant.x86_attention``).
    """

    backend: str = "x86"
    per_channel: bool = True
    symmetric_activations: bool = False
    observer: str | None = None
    percentile: float = 99.99
    calib: int | None = None
    calib_batch: int = 64
    int8_attention: bool = False

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if self.int8_attention and self.backend != "x86":
            raise VitquantError(
                f"int8_attention is an x86 option (torchao's fused int8 attention kernel); "
                f"the {self.backend} quantizer has no such kernel: drop it or use backend='x86'."
            )
        if self.observer is None:  # frozen: resolve the backend's default once, here
            object.__setattr__(self, "observer", get_backend(self.backend).default_observer)
        if self.observer not in OBSERVERS:
            raise VitquantError(
                f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}."
            )
        check_calibration(self)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DynamicPTQ:
    """Dynamic int8 quantization: int8 weights, activations quantized per batch at run time.

    Uses PyTorch's eager dynamic quantization (``torch.ao.quantization.quantize_dynamic``, qint8
    weights, fbgemm/x86 kernels), which runs real int8 GEMMs on CPU. It covers ``nn.Linear``
    (and recurrent layers); convolutions stay in float - PyTorch has no dynamic int8 conv.

    Attributes:
        types: module types to quantize (names of ``torch.nn`` classes).
        engine: quantized engine (``x86``, ``fbgemm`` or ``qnnpack``).
    """

    types: tuple[str, ...] = ("Linear",)
    engine: str = "x86"

    def to_dict(self) -> dict:
        return asdict(self)
