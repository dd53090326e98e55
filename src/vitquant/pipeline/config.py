"""The pipeline's recipe: one frozen dataclass, and the rule that picks the layer ranking."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineConfig:
    """One run of the pipeline.

    Attributes:
        max_drop: accuracy budget in points (fp32 val accuracy minus int8 val accuracy).
        threshold: outlier % above which an observed point is significant.
        stats_images: calibration images used for the activation statistics.
        per_channel: per-channel weight scales for static PTQ.
        observer: activation observer for static PTQ (see ``StaticPTQ``; None: the
            quantizer's default).
        backend: pt2e quantizer, ``x86`` or ``xnnpack``.
        export: ``pte``: every pt2e variant is also lowered to an ExecuTorch XNNPACK program,
            measured (val and test) and offered to the final choice as its own candidate
            (backend ``executorch-xnnpack``); needs ``backend == "xnnpack"``.
        openvino: every static int8 variant also gets its OpenVINO twin (NNCF static int8 of
            the float model with the same ignore list, run by OpenVINO's CPU plugin), measured
            and offered to the final choice (backend ``openvino``).
        trials: Optuna trials of the QAT search when post-training misses the budget.
        qat_epochs: epochs per QAT trial.
        qat_train_limit: training images per QAT epoch (None: all fit images).
        force_qat: run the QAT branch even when post-training meets the budget.
        sensitivity_limit: val images for the per-layer ranking (None: all val).
        ranking: how layers are ranked for the accuracy-aware ignore list: ``sensitivity`` (the
            end-to-end analysis, two val evaluations per layer), ``sqnr`` (each layer's own W8A8
            output SQNR, one pass) or ``auto`` (``sensitivity`` when it is estimated to take at
            most ``RANKING_BUDGET_S`` seconds from the fp32 step's speed, else ``sqnr``).
        search: ``bisect`` (binary search on the number of float layers, ~log2(layers) steps)
            or ``linear`` (one more layer per step).
        lower: measure x86 pt2e variants (val, test and latency) on the inductor-lowered
            model, the int8 kernels that deploy (else the eager emulation is measured and the
            rows say ``simulated``; a ``simulated`` row never wins the final choice on speed
            or size).
        int8_attention: x86 static variants also quantize the attention matmuls, fused into
            torchao's int8 attention kernel on AMX CPUs (``StaticPTQ.int8_attention``; the QAT
            branch keeps float attention matmuls).
        qat: False skips the QAT branch whatever the drop (``--no-qat``); the skip is recorded.
        lowbit: a low-bit target setting (``vitquant.quant.lowbit.LowBitPTQ``: W/A bits below 8,
            quantized attention or LayerNorm); None: int8 of the Linear/Conv layers. With a
            low-bit target the ``static`` step measures its min-max quantization and, when that
            misses the budget, the ``vit-methods`` step tries the ViT-aware methods before the
            ignore list (all simulated rows).
        vit_methods: the methods the ``vit-methods`` step uses (None: each alone on val, then
            every one that helps, together).
    """

    max_drop: float = 1.0
    threshold: float = 5.0
    stats_images: int = 256
    per_channel: bool = True
    observer: str | None = None
    backend: str = "x86"
    export: str = "none"
    openvino: bool = False
    trials: int = 4
    qat_epochs: int = 2
    qat_train_limit: int | None = None
    force_qat: bool = False
    sensitivity_limit: int | None = None
    lower: bool = True
    int8_attention: bool = False
    ranking: str = "auto"
    search: str = "bisect"
    qat: bool = True
    lowbit: object = None
    vit_methods: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        from vitquant.errors import VitquantError
        from vitquant.quant.configs import check_backend, check_export

        check_export(self.export, check_backend(self.backend))
        if self.ranking not in ("auto", "sensitivity", "sqnr"):
            raise VitquantError(f"ranking {self.ranking!r}: use auto, sensitivity or sqnr.")
        if self.search not in ("bisect", "linear"):
            raise VitquantError(f"search {self.search!r}: use bisect or linear.")
        if self.int8_attention and self.backend != "x86":
            raise VitquantError(
                f"--x86-int8-attention needs the x86 quantizer, not {self.backend!r}: drop it "
                "or use --quantizer x86."
            )


# The end-to-end sensitivity ranking is used when its estimated cost is at most this.
RANKING_BUDGET_S = 120.0


def ranking_method(cfg: PipelineConfig, *, n_layers: int, n_val: int, s_per_image: float):
    """``(method, estimated seconds of the sensitivity analysis)`` for the ignore-list search."""
    estimate = 2 * n_layers * n_val * s_per_image
    if cfg.ranking != "auto":
        return cfg.ranking, estimate
    return ("sensitivity" if estimate <= RANKING_BUDGET_S else "sqnr"), estimate
