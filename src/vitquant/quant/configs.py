"""One frozen dataclass per quantization recipe; the CLI only builds these and calls the library."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vitquant.errors import VitquantError

OBSERVERS = ("minmax", "moving_average", "histogram", "percentile")
BACKENDS = ("x86",)  # pt2e quantizer backends; see vitquant.quant.pt2e.QUANTIZER_FACTORIES


@dataclass(frozen=True)
class StaticPTQ:
    """Static post-training quantization with torchao's pt2e flow.

    Attributes:
        backend: pt2e quantizer backend (``x86``; others register in ``QUANTIZER_FACTORIES``).
        per_channel: int8 weights with one scale per output channel (else one per tensor).
        symmetric_activations: int8 symmetric activations (zero point 0) instead of the
            backend's default uint8 asymmetric ones.
        observer: activation range estimator: ``minmax`` (running min/max), ``moving_average``
            (EMA of per-batch min/max), ``histogram`` (torch's L2-error-minimising histogram
            search) or ``percentile`` (mean of per-batch ``percentile``/``100-percentile``).
        percentile: upper percentile of the ``percentile`` observer.
        calib: calibration images from the ``calib`` role (None: all of it).
        calib_batch: calibration batch size.
    """

    backend: str = "x86"
    per_channel: bool = True
    symmetric_activations: bool = False
    observer: str = "minmax"
    percentile: float = 99.99
    calib: int | None = None
    calib_batch: int = 64

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise VitquantError(
                f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}."
            )
        if not 50.0 < self.percentile <= 100.0:
            raise VitquantError(f"percentile must be in (50, 100], got {self.percentile}.")
        if self.calib is not None and self.calib <= 0:
            raise VitquantError(f"--calib must be > 0 images (got {self.calib}).")
        if self.calib_batch <= 0:
            raise VitquantError(f"calibration batch size must be > 0 (got {self.calib_batch}).")

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
