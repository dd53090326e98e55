"""Every option more than one command takes, defined once: same flag, default, type and help.

A command declares ``calib: CalibOpt = 256``: the alias carries the flag names and help, so
``vitquant quantize --help`` and ``vitquant qat --help`` cannot drift apart. Where the default is
the library's choice, a constant next to the alias reads it from the config dataclass
(``per_channel: PerChannelOpt = PER_CHANNEL``, from ``StaticPTQ``). ``tests/test_cli_options.py``
walks every command and checks that an option name has one flag, default, type and help
everywhere, apart from the few commands listed there with their reason.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from vitquant.pipeline import PipelineConfig
from vitquant.quant.configs import StaticPTQ
from vitquant.quiet import apply, verbose_requested


def apply_verbosity(verbose: bool) -> bool:
    """``--verbose``'s callback: third-party warnings and log lines are hidden unless asked."""
    apply(verbose=verbose or verbose_requested())
    return verbose


# -- every command ---------------------------------------------------------------------------

VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Show third-party warnings and log lines (torch, inductor, ONNX Runtime), hidden "
        "by default (also VITQUANT_VERBOSE=1).",
        callback=apply_verbosity,
        is_eager=True,
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option(help="Output folder [default: runs/<command>/<model>].")
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing result file in --out.")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads [default: all cores].")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every data subset.")]

# -- the model -------------------------------------------------------------------------------

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Registry name (see `vitquant models`) or timm:<name>, "
        "e.g. timm:deit_small_patch16_224."
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(help="Checkpoint file (state_dict); default: the model's registered checkpoint."),
]
PretrainedOpt = Annotated[
    bool, typer.Option(help="timm:<name> only: download timm's pretrained weights (online).")
]
RandomOpt = Annotated[
    bool,
    typer.Option(help="Keep random weights on purpose (architecture analysis only)."),
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="timm:<name> only: classifier size (default: the number of data classes)."
    ),
]

# -- the data --------------------------------------------------------------------------------

DataOpt = Annotated[
    str,
    typer.Option(help="digits (embedded), cifar10 ($VITQUANT_ASSETS), or an ImageFolder path."),
]
CalibOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="Calibration images (from train, disjoint from val): the activation ranges are "
        "calibrated on them, and `analyze` studies them.",
    ),
]
ValOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Validation images from train, used for every choice [default: "
        "min(1000, 15% of train)].",
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option(min=1, help="Stratified subset of the test split [default: all].")
]

# -- the int8 recipe (StaticPTQ / QATConfig) -------------------------------------------------

QuantizerOpt = Annotated[
    str,
    typer.Option(
        "--quantizer",
        help="pt2e quantizer: x86 (torchao X86InductorQuantizer, uint8 activations, inductor "
        "int8 kernels) or xnnpack (ExecuTorch XNNPACKQuantizer, symmetric int8 config, the "
        "edge/mobile path).",
    ),
]
QUANTIZER = StaticPTQ.backend
ExportOpt = Annotated[
    str,
    typer.Option(
        "--export",
        help="pte: also lower each static/QAT int8 model to an ExecuTorch XNNPACK program "
        "(.pte), run it with ExecuTorch's runtime and add its row (needs --quantizer xnnpack). "
        "none: no extra artifact.",
    ),
]
ObserverOpt = Annotated[
    str | None,
    typer.Option(
        help="Activation calibration: minmax, moving_average, histogram, percentile "
        "[default: minmax for x86, histogram for xnnpack]; ORT mirrors it with "
        "MinMax/Entropy/Percentile.",
    ),
]
# " /--no-..." adds the spelling qat, search and pipeline had before as a second "off" name.
PerChannelOpt = Annotated[
    bool,
    typer.Option(
        "--per-channel/--per-tensor",
        " /--no-per-channel",
        help="Int8 weight scales: one per output channel, or one per tensor.",
    ),
]
PER_CHANNEL = StaticPTQ.per_channel
SymActOpt = Annotated[
    bool,
    typer.Option(
        "--symmetric-activations/--asymmetric-activations",
        " /--no-symmetric-activations",
        help="Activations with zero point 0 (x86: int8 instead of uint8), or the quantizer's "
        "asymmetric ones (xnnpack: int8 either way).",
    ),
]
SYMMETRIC_ACTIVATIONS = StaticPTQ.symmetric_activations

# -- what stays in float ---------------------------------------------------------------------

IgnoreOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Keep in float: a module name, glob (blocks.*.mlp.fc2), parameter name or "
        "type:Linear; repeatable. quantize also takes 'auto' (accuracy-aware, see --max-drop)."
    ),
]
IgnoreTypeOpt = Annotated[
    list[str] | None,
    typer.Option(help="Keep every module of this type in float (Linear, Conv2d...); repeatable."),
]
IgnoreFileOpt = Annotated[
    Path | None, typer.Option(help="File with one --ignore entry per line (# comments).")
]
MaxDropOpt = Annotated[
    float,
    typer.Option(
        min=0,
        help="Accuracy budget in points: fp32 minus int8 accuracy, measured on val (pipeline: "
        "every choice; quantize: --ignore auto). The default is the library's "
        "(PipelineConfig.max_drop).",
    ),
]
MAX_DROP = PipelineConfig.max_drop

# -- outliers --------------------------------------------------------------------------------

ThresholdOpt = Annotated[
    float,
    typer.Option(min=0, max=100, help="Outlier % above which an observed point is significant."),
]
THRESHOLD = PipelineConfig.threshold
StatsImagesOpt = Annotated[
    int, typer.Option(min=1, help="Calibration images for the activation statistics.")
]
STATS_IMAGES = PipelineConfig.stats_images
PlotsOpt = Annotated[bool, typer.Option(help="Write the PNG figures.")]

# -- measurement -----------------------------------------------------------------------------

OnnxOpt = Annotated[
    bool,
    typer.Option(
        help="Also export to ONNX and add ONNX Runtime int8 rows (quantize: ORT quantizes the "
        "float model; qat/search: the trained int8 model runs in ORT)."
    ),
]
OpenVinoOpt = Annotated[
    bool,
    typer.Option(
        help="Also quantize each static variant with NNCF and run it in OpenVINO (its CPU "
        "plugin runs the attention matmuls in int8 too)."
    ),
]
LowerOpt = Annotated[
    bool,
    typer.Option(
        help="Time pt2e models after inductor lowering (int8 kernels); --no-lower times the "
        "eager emulation and marks the rows simulated."
    ),
]


class X86Float(StrEnum):
    """``--x86-float`` choices (``vitquant.quant.lowered.FLOAT_OPS``)."""

    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


X86FloatOpt = Annotated[
    X86Float,
    typer.Option(
        "--x86-float",
        help="Precision of the operators the lowered x86 int8 graph leaves in float (attention "
        "matmuls, softmax, LayerNorm): auto = bf16 on a CPU with native bf16 (AMX or "
        "AVX512-BF16; PyTorch's int8-mixed-bf16 recipe, the fastest DeiT-S path measured), "
        "else fp32.",
    ),
]
X86Int8AttnOpt = Annotated[
    bool,
    typer.Option(
        help="x86 static: also quantize timm attention's q@k^T and attn@v and lower each "
        "block to torchao's fused int8 attention kernel (AMX CPUs; elsewhere the matmuls "
        "run as quantize/dequantize around float ones)."
    ),
]
X86CppWrapperOpt = Annotated[
    bool,
    typer.Option(
        help="Compile the lowered x86 int8 graph with inductor's C++ wrapper: no Python between "
        "kernels (DeiT-S at batch 1 about 13% faster), compilation about twice as long."
    ),
]
LatencyBatchOpt = Annotated[
    int,
    typer.Option(min=1, help="Batch size of the reported latency (batch 1 and 32 are both saved)."),
]
LatencyOpt = Annotated[
    bool, typer.Option(help="Time each row (pt2e after inductor lowering: about a minute).")
]
WAccOpt = Annotated[float, typer.Option("--w-acc", help="Composite score weight of accuracy.")]
WSizeOpt = Annotated[
    float, typer.Option("--w-size", help="Composite score weight of the size reduction.")
]
WSpeedOpt = Annotated[
    float, typer.Option("--w-speed", help="Composite score weight of the latency reduction.")
]

# -- QAT training (QATConfig; `train` has its own, defaulting to the model's recipe) ---------

EpochsOpt = Annotated[
    int, typer.Option(min=1, help="QAT epochs (per trial, unless --search-epochs).")
]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")]
MomentumOpt = Annotated[float, typer.Option(help="SGD momentum (Nesterov).")]
WdOpt = Annotated[float, typer.Option(help="Weight decay.")]
OptimizerOpt = Annotated[str, typer.Option(help="sgd or adamw.")]
BatchOpt = Annotated[
    int, typer.Option(min=1, help="Global batch size (split across torchrun ranks).")
]
FreezeObsOpt = Annotated[
    int | None,
    typer.Option(min=0, help="Freeze the fake-quant observers (scales) after this many epochs."),
]
FreezeBnOpt = Annotated[
    int | None,
    typer.Option(min=0, help="Freeze BatchNorm running statistics after this many epochs."),
]
TrainLimitOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="Train on this many fit images per epoch (drawn afresh) [default: all]."
    ),
]

# -- low-bit settings (quantize, pipeline) ---------------------------------------------------

WBitsOpt = Annotated[
    int, typer.Option(min=2, max=8, help="Weight bits of every quantized layer (per channel).")
]
ABitsOpt = Annotated[
    int, typer.Option(min=2, max=8, help="Activation bits of every quantized input (per tensor).")
]
BitsRuleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--bits",
        help="Per-layer bits GLOB=W/A, e.g. 'blocks.0.*=8/8' or 'head=8/8' (repeatable; the "
        "last matching rule wins).",
    ),
]
QuantAttnOpt = Annotated[
    bool,
    typer.Option(
        "--quantize-attention",
        help="Also quantize the attention matmul inputs (q, k, v) and the post-softmax map, as "
        "integer edge runtimes and NPUs do.",
    ),
]
QuantLnOpt = Annotated[
    bool,
    typer.Option("--quantize-layernorm", help="Also quantize LayerNorm inputs and outputs."),
]
VitMethodsOpt = Annotated[
    str | None,
    typer.Option(
        "--vit-methods",
        help="ViT-aware methods, comma separated: smoothquant, ln-reparam, rotate, twin-gelu, "
        "log2-softmax, gptq, or all [default: each measured alone, then every one that helps "
        "on val together].",
    ),
]
