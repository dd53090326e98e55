"""``LowBitQuantizer``: a pt2e quantizer that annotates a ViT for simulated W``w``A``a``.

What is quantized (each choice keyed by the module name of the node, from ``nn_module_stack``):

- every Linear/Conv (``aten.linear`` / ``aten.conv*``): its input activation, per tensor and
  asymmetric at the layer's ``abits``, and its weight, per output channel and symmetric on the
  restricted range at ``wbits`` (or on given ``weight_scales``); the bias stays float. An input
  produced by GELU uses the twin-uniform quantizer when ``gelu="twin"``.
- with ``quantize_attention``, both inputs of each matmul between two activations (``q @ k^T``
  and ``attn @ v`` of timm attention exported with ``fused_attn=False``). Their bit width is the
  ``abits`` of the attention module's *first* Linear (``qkv`` in timm): q, k and v are that
  layer's output and the probabilities derive from them, so a rule for ``blocks.3.attn.qkv``
  sets the precision of everything between ``qkv`` and ``proj``; ignoring that Linear (or the
  attention module) keeps the matmuls float too. With ``softmax="log2"`` / ``"log2-sqrt2"``
  the probabilities (the input of ``attn @ v`` that comes from softmax) use ``log2_quant``.
- with ``quantize_layernorm``, each LayerNorm's input at the LayerNorm's own ``abits``, and its
  output unless every use of it already is a quantized input (the next Linear's).

A tensor is quantized once: when several quantized inputs read the same tensor they share one
observer (``SharedQuantizationSpec``), at the highest bit width asked for. Nothing inside an
ignored module is annotated. Walking back from an input to its producer skips ops that only
move values (dropout in eval, reshape, permute, ...), so ``gelu -> dropout -> fc2`` is seen as
GELU's output.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

from vitquant.errors import VitquantError
from vitquant.quant.lowbit.bits import BitsPlan
from vitquant.quant.lowbit.numerics import activation_range, weight_range
from vitquant.quant.lowbit.observers import (
    FixedScaleWeightObserver,
    Log2SoftmaxObserver,
    LowBitPerChannelObserver,
    TwinUniformObserver,
    UniformObserver,
    UniformPercentileObserver,
)
from vitquant.quant.pt2e import WEIGHT_OPS, _module_of

aten = torch.ops.aten
SOFTMAX_MODES = {"uniform": None, "log2": "2", "log2-sqrt2": "sqrt2"}  # mode -> log2 base
GELU_MODES = ("uniform", "twin")
ACT_OBSERVERS = ("minmax", "percentile")
MATMULS = {aten.matmul.default, aten.bmm.default, aten.mm.default}
SOFTMAXES = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
LAYERNORMS = {aten.layer_norm.default}
# ops whose output holds the same values as their first input (walked through both ways)
PASS_THROUGH = {
    aten.dropout.default,
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.view.default,
    aten.reshape.default,
    aten.permute.default,
    aten.transpose.int,
    aten.flatten.using_ints,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.contiguous.default,
}
# ops whose output is a subset of their input's values (walked through forward only: a subset
# has its own range, but a quantized subset is already on its source's grid)
SELECTS = {aten.select.int, aten.slice.Tensor, operator.getitem}


@dataclass(frozen=True)
class _Request:
    consumer: torch.fx.Node | None  # None: the tensor's own output (a LayerNorm's)
    bits: int
    kind: str  # uniform | log2 | twin


def producer(node: torch.fx.Node) -> torch.fx.Node:
    """``node``, or the node it copies values from through ``PASS_THROUGH`` ops."""
    while node.op == "call_function" and node.target in PASS_THROUGH and node.args:
        if not isinstance(node.args[0], torch.fx.Node):
            break
        node = node.args[0]
    return node


class LowBitQuantizer(Quantizer):
    """Annotates an exported graph for simulated low-bit PTQ (see the module docstring).

    Args:
        plan: bit widths per module (``BitsPlan``).
        quantize_attention: quantize both inputs of the attention matmuls.
        quantize_layernorm: quantize LayerNorm inputs (and outputs not already quantized).
        softmax: ``uniform``, ``log2`` or ``log2-sqrt2``: the quantizer of the attention
            probabilities (needs ``quantize_attention``).
        gelu: ``uniform`` or ``twin``: the quantizer of GELU outputs feeding a Linear.
        ignore: module names kept float (nothing inside them is annotated).
        weight_scales: module name -> per-channel scales of weights already rounded onto the
            symmetric grid (``FixedScaleWeightObserver``), e.g. by GPTQ.
        observer: activation ranges: ``minmax`` or ``percentile``.
        percentile: upper percentile of the ``percentile`` observer.
    """

    def __init__(
        self,
        *,
        plan: BitsPlan = BitsPlan(),
        quantize_attention: bool = False,
        quantize_layernorm: bool = False,
        softmax: str = "uniform",
        gelu: str = "uniform",
        ignore: Iterable[str] = (),
        weight_scales: Mapping[str, torch.Tensor] | None = None,
        observer: str = "minmax",
        percentile: float = 99.99,
    ) -> None:
        super().__init__()
        check_modes(
            softmax=softmax, gelu=gelu, observer=observer, quantize_attention=quantize_attention
        )
        self.plan = plan
        self.quantize_attention = quantize_attention
        self.quantize_layernorm = quantize_layernorm
        self.softmax, self.gelu, self.observer, self.percentile = (
            softmax,
            gelu,
            observer,
            percentile,
        )
        self.ignore = tuple(ignore)
        self.weight_scales = dict(weight_scales or {})
        self.notes: list[str] = []
        self.counts: dict[str, int] = {}  # what annotate quantized: kind -> number of tensors

    # -- specs -------------------------------------------------------------------------------

    def activation_spec(self, bits: int, kind: str = "uniform") -> QuantizationSpec:
        """Per-tensor ``bits``-bit spec (uint8 storage, codes ``0..2^b-1``) of ``kind``."""
        qmin, qmax = activation_range(bits)
        if kind == "log2":
            base = SOFTMAX_MODES[self.softmax]
            ctr = Log2SoftmaxObserver.with_args(bits=bits, base=base)
        elif kind == "twin":
            ctr = TwinUniformObserver.with_args(bits=bits)
        elif self.observer == "percentile":
            ctr = UniformPercentileObserver.with_args(percentile=self.percentile)
        else:
            ctr = UniformObserver
        return QuantizationSpec(
            dtype=torch.uint8,
            quant_min=qmin,
            quant_max=qmax,
            qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=ctr,
        )

    def weight_spec(self, bits: int, name: str | None) -> QuantizationSpec:
        """Per-output-channel symmetric ``bits``-bit spec (int8 storage, restricted range)."""
        qmin, qmax = weight_range(bits)
        if name in self.weight_scales:
            ctr = FixedScaleWeightObserver.with_args(
                scales=self.weight_scales[name], bits=bits, name=name
            )
        else:
            ctr = LowBitPerChannelObserver
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=qmin,
            quant_max=qmax,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            observer_or_fake_quant_ctr=ctr,
        )

    # -- annotation ----------------------------------------------------------------------------

    def ignored(self, name: str | None) -> bool:
        """Whether module ``name`` is, or is inside, an ignored module."""
        return name is not None and any(name == i or name.startswith(i + ".") for i in self.ignore)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        nodes = [n for n in model.graph.nodes if n.op == "call_function"]
        requests: dict[torch.fx.Node, list[_Request]] = {}  # tensor -> who wants it quantized
        weights = self._ask_layers(nodes, requests)
        if self.quantize_attention:
            self._ask_attention(nodes, requests)
        if self.quantize_layernorm:
            self._ask_layernorms(nodes, requests)
        self._write(requests, weights)
        return model

    @staticmethod
    def _ask(requests: dict, tensor, consumer, bits: int, kind: str = "uniform") -> None:
        if isinstance(tensor, torch.fx.Node):
            requests.setdefault(tensor, []).append(_Request(consumer, bits, kind))

    def _ask_layers(self, nodes: list[torch.fx.Node], requests: dict) -> dict:
        """Linear/Conv inputs into ``requests``; returns ``{op node: (weight node, spec)}``."""
        weights = {}
        for node in nodes:
            if node.target not in WEIGHT_OPS or len(node.args) < 2:
                continue
            name = _module_of(node)
            if self.ignored(name):
                continue
            setting = self.plan.for_module(name or "")
            x = node.args[0]
            twin = (
                self.gelu == "twin"
                and isinstance(x, torch.fx.Node)
                and producer(x).target == aten.gelu.default
            )
            self._ask(requests, x, node, setting.abits, "twin" if twin else "uniform")
            if isinstance(node.args[1], torch.fx.Node):
                weights[node] = (node.args[1], self.weight_spec(setting.wbits, name))
        layer_names = {_module_of(n) for n in nodes if n.target in WEIGHT_OPS}
        unknown = sorted(set(self.weight_scales) - layer_names - set(self.ignore))
        if unknown:
            raise VitquantError(
                f"weight scales given for {', '.join(unknown)}, which are not Linear/Conv "
                "layers of the graph; pass scales keyed by layer name (e.g. 'blocks.0.attn.qkv')."
            )
        return weights

    def _ask_attention(self, nodes: list[torch.fx.Node], requests: dict) -> None:
        """Both inputs of every matmul between activations; log2 for softmax outputs."""
        linears = [n for n in nodes if n.target in WEIGHT_OPS]
        for node in nodes:
            if node.target not in MATMULS or not self._between_activations(node):
                continue
            bits = self._attention_bits(_module_of(node), linears)
            if bits is None:
                continue
            for arg in node.args[:2]:
                log2 = self.softmax != "uniform" and producer(arg).target in SOFTMAXES
                self._ask(requests, arg, node, bits, "log2" if log2 else "uniform")

    def _ask_layernorms(self, nodes: list[torch.fx.Node], requests: dict) -> None:
        """LayerNorm inputs, and outputs that no quantized input already covers."""
        for node in nodes:
            name = _module_of(node)
            if node.target not in LAYERNORMS or self.ignored(name):
                continue
            bits = self.plan.for_module(name or "").abits
            self._ask(requests, node.args[0], node, bits)
            if not self._covered(node, requests):
                self._ask(requests, node, None, bits)

    def _between_activations(self, node: torch.fx.Node) -> bool:
        args = node.args[:2]
        return len(args) == 2 and all(
            isinstance(a, torch.fx.Node) and producer(a).op != "get_attr" for a in args
        )

    def _attention_bits(self, module: str | None, linears: list[torch.fx.Node]) -> int | None:
        """abits of the first Linear inside ``module`` (None: kept float)."""
        if module is None or self.ignored(module):
            return None
        for node in linears:
            name = _module_of(node)
            if name is not None and name.startswith(module + "."):
                return None if self.ignored(name) else self.plan.for_module(name).abits
        return self.plan.for_module(module).abits

    @staticmethod
    def _covered(node: torch.fx.Node, requests: dict) -> bool:
        """Every use of ``node`` reaches a quantized input through value-preserving ops."""
        consumers = {r.consumer for r in requests.get(node, ())}
        users = list(node.users)
        return bool(users) and all(
            u in consumers
            or (
                u.op == "call_function"
                and u.target in PASS_THROUGH | SELECTS
                and LowBitQuantizer._covered(u, requests)
            )
            for u in users
        )

    def _write(self, requests: dict, weights: dict) -> None:
        annotations: dict[torch.fx.Node, QuantizationAnnotation] = {}

        def annotation(node):
            return annotations.setdefault(node, QuantizationAnnotation(_annotated=True))

        counts: dict[str, int] = {}
        for tensor, reqs in requests.items():
            bits = max(r.bits for r in reqs)
            kinds = {r.kind for r in reqs}
            kind = next(iter(kinds)) if len(kinds) == 1 else "uniform"
            if len({r.bits for r in reqs}) > 1 or len(kinds) > 1:
                self.notes.append(
                    f"{tensor.name} feeds inputs asking for different quantizers; "
                    f"quantized once at {bits} bits ({kind})"
                )
            spec = self.activation_spec(bits, kind)
            counts[kind] = counts.get(kind, 0) + 1
            consumers = list(dict.fromkeys(r.consumer for r in reqs))
            if None in consumers:  # the tensor's own output: its users share that observer
                annotation(tensor).output_qspec = spec
                shared = SharedQuantizationSpec(tensor)
                for c in consumers:
                    if c is not None:
                        annotation(c).input_qspec_map[tensor] = shared
                continue
            first, *rest = consumers
            annotation(first).input_qspec_map[tensor] = spec
            for c in rest:
                annotation(c).input_qspec_map[tensor] = SharedQuantizationSpec((tensor, first))
        for node, (weight, spec) in weights.items():
            annotation(node).input_qspec_map[weight] = spec
        counts["weight"] = len(weights)
        for node, ann in annotations.items():
            node.meta["quantization_annotation"] = ann
        self.counts = counts

    def validate(self, model: torch.fx.GraphModule) -> None:
        """Nothing to check beyond what ``annotate`` refuses."""


def check_modes(*, softmax: str, gelu: str, observer: str, quantize_attention: bool) -> None:
    """Refuse unknown ``softmax`` / ``gelu`` / ``observer`` modes (naming the valid choices),
    and a non-uniform softmax without ``quantize_attention`` (nothing it would apply to)."""
    for what, value, choices in (
        ("softmax", softmax, tuple(SOFTMAX_MODES)),
        ("gelu", gelu, GELU_MODES),
        ("observer", observer, ACT_OBSERVERS),
    ):
        if value not in choices:
            raise VitquantError(
                f"unknown {what} mode {value!r}; choose one of {', '.join(choices)}."
            )
    if softmax != "uniform" and not quantize_attention:
        raise VitquantError(
            f"softmax={softmax!r} quantizes the attention probabilities, which are only "
            "quantized with quantize_attention=True; turn it on or use softmax='uniform'."
        )
