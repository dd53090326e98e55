"""Graph surgery on the exported QAT model: prepare, train/eval flags, freezing, conversion.

An exported graph ignores ``module.train()``: dropout and BatchNorm carry their mode as a flag
argument of their aten node, so ``set_graph_mode`` rewrites those flags and ``allow_train_eval``
binds ``.train()`` / ``.eval()`` to it. Evaluation always runs on copies (``eval_copy``,
``convert_copy``), so the model being trained is never switched out of its mode.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Sequence

import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.pt2e import edge_friendly_attention, export_model, make_quantizer
from vitquant.quant.qat.config import QATConfig
from vitquant.quant.qat.patterns import cached_patterns

BN_TARGETS = (
    torch.ops.aten.batch_norm.default,
    torch.ops.aten._native_batch_norm_legit.default,
    torch.ops.aten.cudnn_batch_norm.default,
)  # the ``training`` flag is argument 5
DROPOUT_TARGETS = (
    torch.ops.aten.dropout.default,
    torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default,
)  # the ``train`` flag is argument 2


def make_qat_quantizer(
    cfg: QATConfig, ignore: Sequence[str] = (), layers: Sequence[str] = ()
) -> object:
    """The pt2e quantizer of ``cfg.backend`` in QAT mode, with ``ignore`` modules left in float
    and its ranges narrowed to ``cfg.plan`` (the rules applied to the ``layers`` they match)."""
    return make_quantizer(
        backend=cfg.backend,
        per_channel=cfg.per_channel,
        symmetric_activations=cfg.symmetric_activations,
        is_qat=True,
        ignore=list(ignore),
        plan=cfg.plan if cfg.low_bit or cfg.bits else None,
        layers=list(layers),
    )


def prepare_qat(
    model: nn.Module, example: torch.Tensor, cfg: QATConfig, ignore: Sequence[str] = ()
) -> torch.fx.GraphModule:
    """Export ``model`` and insert fake-quant modules (``prepare_qat_pt2e``), in train mode."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from vitquant.layers import quantizable_names

    if example.shape[0] < 2:  # batch 1 would be specialised
        example = example.repeat(2, 1, 1, 1)
    layers = quantizable_names(model)
    cfg.plan.check(name for name, _ in model.named_modules())  # a rule matching nothing fails
    model = copy.deepcopy(model)
    try:
        with edge_friendly_attention(model, cfg.backend):
            graph = export_model(model, example)
    except Exception as exc:  # torch raises many types for untraceable models
        raise VitquantError(
            f"torch.export could not trace the model for QAT ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]})."
        ) from exc
    with cached_patterns():
        prepared = prepare_qat_pt2e(graph, make_qat_quantizer(cfg, ignore, layers))
    set_graph_mode(prepared, training=True)
    return allow_train_eval(prepared)


def set_graph_mode(
    graph: torch.fx.GraphModule, *, training: bool, bn_training: bool | None = None
) -> dict[str, int]:
    """Switch an exported graph between train and eval behaviour, keeping every literal.

    ``module.train()`` has no effect on an exported graph: dropout and BatchNorm carry their mode
    as a flag argument. This sets the dropout ``train`` flags to ``training`` and the batch_norm
    ``training`` flags to ``bn_training`` (default ``training``); ``bn_training=False`` while
    training is how BatchNorm is frozen (normalise with, and stop updating, the running
    statistics). torchao's ``move_exported_model_to_train`` is not used because its pattern
    rewrite also replaces every dropout probability by its pattern's 0.5 (torchao 0.18).

    Returns:
        ``{"dropout": n, "batch_norm": m}``: the nodes found.
    """
    bn_training = training if bn_training is None else bn_training
    found = {"dropout": 0, "batch_norm": 0}
    changed = False
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in BN_TARGETS:
            index, value, kind = 5, bn_training, "batch_norm"
        elif node.target in DROPOUT_TARGETS:
            index, value, kind = 2, training, "dropout"
        else:
            continue
        found[kind] += 1
        args = list(node.args)
        if args[index] != value:
            args[index] = value
            node.args = tuple(args)
            changed = True
    if changed:
        graph.recompile()
    return found


def allow_train_eval(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Let ``graph.train()`` / ``graph.eval()`` work (``accuracy`` calls ``.eval()``).

    They flip the graph's dropout and BatchNorm flags with ``set_graph_mode``; a frozen BatchNorm
    stays frozen.
    """

    def _train(self, mode: bool = True):
        frozen = getattr(self, "_vitquant_bn_frozen", False)
        set_graph_mode(self, training=mode, bn_training=mode and not frozen)
        return self

    graph.train = types.MethodType(_train, graph)
    graph.eval = types.MethodType(lambda self: _train(self, False), graph)
    return graph


def freeze_bn(graph: torch.fx.GraphModule) -> None:
    """Freeze BatchNorm: normalise with the running statistics and stop updating them."""
    graph._vitquant_bn_frozen = True
    set_graph_mode(graph, training=True, bn_training=False)


def fake_quant_modules(graph: nn.Module) -> dict[str, nn.Module]:
    """The fake-quant modules (they carry ``scale`` and ``zero_point``) by name."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    return {n: m for n, m in graph.named_modules() if isinstance(m, FakeQuantizeBase)}


def freeze_observers(graph: nn.Module) -> None:
    """Stop every observer: scales and zero points keep their current values."""
    from torchao.quantization.pt2e import disable_observer

    graph.apply(disable_observer)


def eval_copy(prepared: nn.Module, *, fake_quant: bool = True) -> nn.Module:
    """A CPU copy of ``prepared`` in eval mode (``fake_quant=False``: the latent float model)."""
    from torchao.quantization.pt2e import disable_fake_quant, disable_observer

    model = copy.deepcopy(prepared).cpu()
    set_graph_mode(model, training=False)
    model.apply(disable_observer)
    if not fake_quant:
        model.apply(disable_fake_quant)
    return allow_train_eval(model)


def convert_copy(prepared: nn.Module) -> nn.Module:
    """The int8 reference model (``convert_pt2e``) of a copy of ``prepared``; it stays as is."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = eval_copy(prepared)
    with cached_patterns():
        model = convert_pt2e(model)
    set_graph_mode(model, training=False)
    drop_unused_state(model)
    return allow_train_eval(model)


def drop_unused_state(graph: torch.fx.GraphModule) -> list[str]:
    """Delete parameters and buffers the graph never reads; returns their names.

    After ``convert_pt2e`` of a QAT graph the float weights stay attached to their (now unused)
    holder modules beside the folded int8 constants, and ``torch.export`` would save both.
    """
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    called = {n.target for n in graph.graph.nodes if n.op == "call_module"}
    dropped = []
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        owner, _, attr = name.rpartition(".")
        if name in used or any(owner == c or owner.startswith(c + ".") for c in called):
            continue
        module = graph.get_submodule(owner) if owner else graph
        delattr(module, attr)
        dropped.append(name)
    return dropped
