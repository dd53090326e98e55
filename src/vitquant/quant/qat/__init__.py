"""Quantization-aware training with torchao's pt2e flow (``prepare_qat_pt2e``).

The float model is exported, annotated by the pt2e quantizer in QAT mode (fake-quant modules on
weights and activations, Conv+BN kept as a foldable QAT pattern) and fine-tuned; epoch 0 of the
history is plain static PTQ with the same quantizer, and the kept weights are those of the best
int8 validation epoch. One concept per module:

- ``config``: the recipe (``QATConfig``) and what a run produced (``QATResult``);
- ``graph``: preparing the exported graph, its train/eval flags, freezing, converted copies;
- ``patterns``: a memo over torchao's pattern export (``cached_patterns``);
- ``distributed``: each rank's share of an epoch and the buffers rank 0 hands out;
- ``loop``: ``calibrate`` and ``run_qat``, the training loop;
- ``deploy``: saving, exporting (ONNX, ``.pte``) and testing the kept model.
"""

from vitquant.distributed import DistContext, dist_context
from vitquant.quant.qat.config import QATConfig, QATResult
from vitquant.quant.qat.deploy import DeployOptions, deploy_and_report, export_qdq_onnx
from vitquant.quant.qat.graph import (
    BN_TARGETS,
    DROPOUT_TARGETS,
    allow_train_eval,
    convert_copy,
    drop_unused_state,
    eval_copy,
    fake_quant_modules,
    freeze_bn,
    freeze_observers,
    make_qat_quantizer,
    prepare_qat,
    set_graph_mode,
)
from vitquant.quant.qat.loop import calibrate, run_qat
from vitquant.quant.qat.patterns import cached_patterns

__all__ = [
    "BN_TARGETS",
    "DROPOUT_TARGETS",
    "DeployOptions",
    "DistContext",
    "QATConfig",
    "QATResult",
    "allow_train_eval",
    "cached_patterns",
    "calibrate",
    "convert_copy",
    "deploy_and_report",
    "dist_context",
    "drop_unused_state",
    "eval_copy",
    "export_qdq_onnx",
    "fake_quant_modules",
    "freeze_bn",
    "freeze_observers",
    "make_qat_quantizer",
    "prepare_qat",
    "run_qat",
    "set_graph_mode",
]
