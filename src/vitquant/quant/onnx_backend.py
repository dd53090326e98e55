"""ONNX Runtime int8 deployment: export the float model, quantize it with ONNX Runtime, run it.

Exporter node names are not module paths (``node_MatMul_71``), so the float export records, from
the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata, which MatMul/Gemm/Conv node each
Linear/Conv module became. Ignore lists are mapped to node names through that table, and after
quantization ``inspect_layers`` reads the quantized graph back to check, per module, whether its
node is fed by ``DequantizeLinear`` (static QDQ) or was replaced by an integer op (dynamic) - an
ignored module must be neither. The metadata (stack traces) is stripped from the saved float file
so sizes on disk compare weights, not debug info.
"""

from __future__ import annotations

import ast
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.layers import quantizable_names

WEIGHT_OP_TYPES = ("MatMul", "Gemm", "Conv")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# observer name (as in StaticPTQ) -> (ORT CalibrationMethod name, extra_options)
CALIBRATION = {
    "minmax": ("MinMax", {}),
    "moving_average": ("MinMax", {"CalibMovingAverage": True}),
    "histogram": ("Entropy", {}),
    "percentile": ("Percentile", {}),
}


@dataclass
class OnnxFloat:
    """A float ONNX export and its module -> node-name table.

    Attributes:
        path: the ``.onnx`` file (weights inside, metadata stripped).
        module_nodes: quantizable module name -> the MatMul/Gemm/Conv node names it became.
    """

    path: Path
    module_nodes: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class OnnxQuantized:
    """An ONNX Runtime int8 model and what its graph really contains.

    Attributes:
        path: the quantized ``.onnx`` file.
        mode: ``static`` (QDQ) or ``dynamic``.
        int8_layers / float_layers: module names by what the quantized graph shows.
        ignored: module names asked to stay float (checked to be float).
        excluded_nodes: the node names the ignore list mapped to.
    """

    path: Path
    mode: str
    int8_layers: list[str]
    float_layers: list[str]
    ignored: list[str]
    excluded_nodes: list[str]


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> OnnxFloat:
    """Export ``model`` to ONNX (dynamo exporter, dynamic batch) and map modules to nodes.

    The exporter runs unoptimized, so each Conv/MatMul/Gemm keeps its module's name scope (its
    optimizer folds BatchNorm into Conv under the BatchNorm's scope); ONNX Runtime's basic graph
    optimizations (constant folding, Conv+BN fusion - what ORT runs anyway) then produce the
    saved float model. ORT keeps the names of the nodes it fuses into, which is checked.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=65536)},) if len(example) >= 2 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            optimize=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            verbose=False,
        )
    # Fold constants (e.g. the zero bias built from Shape/CastLike for a bias-free Conv, which
    # would stop ORT from fusing the BatchNorm); folding keeps the names of the nodes it keeps.
    from onnxscript.optimizer import fold_constants

    fold_constants(program.model)
    names = set(quantizable_names(model))
    with tempfile.TemporaryDirectory() as tmp:
        raw, optimized = Path(tmp) / "raw.onnx", Path(tmp) / "optimized.onnx"
        program.save(str(raw), external_data=False)
        proto = onnx.load(str(raw))
        table: dict[str, list[str]] = {}
        for node in proto.graph.node:
            meta = {p.key: p.value for p in node.metadata_props}
            owners = [s for s in _scopes(meta.get("pkg.torch.onnx.name_scopes")) if s in names]
            if owners and node.op_type in WEIGHT_OP_TYPES:
                table.setdefault(owners[-1], []).append(node.name)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
        proto = onnx.load(str(optimized))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    # The exporter's value_info can disagree with ONNX shape inference after quantization.
    del proto.graph.value_info[:]
    del proto.metadata_props[:]
    present = {n.name for n in proto.graph.node}
    lost = sorted(m for m, nodes in table.items() if not all(n in present for n in nodes))
    missing = sorted(names - set(table))
    if missing or lost:
        raise VitquantError(
            f"the ONNX export has no MatMul/Gemm/Conv node for {', '.join((missing + lost)[:5])}; "
            "cannot map the ignore list to node names."
        )
    from vitquant.io import atomic_write

    atomic_write(path, lambda p: onnx.save(proto, str(p)))
    return OnnxFloat(path=path, module_nodes={m: table[m] for m in quantizable_names(model)})


def _scopes(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


class _CalibReader:
    """ORT ``CalibrationDataReader`` over the bundle's ``calib`` role."""

    def __init__(self, bundle: DataBundle, spec, *, limit: int | None, batch_size: int) -> None:
        self._batches = bundle.batches("calib", spec, batch_size=batch_size, limit=limit)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch[0].numpy()}


def _nodes(module_nodes: dict[str, list[str]], modules: Iterable[str]) -> list[str]:
    return [n for m in modules for n in module_nodes.get(m, [])]


def quantize_onnx_static(
    fp32: OnnxFloat,
    bundle: DataBundle,
    spec,
    path: str | Path,
    *,
    ignore: Iterable[str] = (),
    per_channel: bool = True,
    symmetric_activations: bool = False,
    observer: str = "minmax",
    percentile: float = 99.99,
    calib: int | None = None,
    calib_batch: int = 64,
    modules: Iterable[str] | None = None,
) -> OnnxQuantized:
    """Static QDQ int8 with ONNX Runtime, calibrated on ``calib``, keeping ``ignore`` in float.

    Only the Linear/Conv modules' nodes are quantized (``nodes_to_quantize``), like the pt2e
    recipe; the ignored modules' nodes are left out of that list and also passed as
    ``nodes_to_exclude``, and the result is checked with ``inspect_layers``. ``modules``
    restricts quantization to these modules (e.g. those its PyTorch twin made int8).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    method, extra = CALIBRATION[observer]
    extra = dict(extra)
    if observer == "percentile":
        extra["CalibPercentile"] = percentile
    if symmetric_activations:
        extra["ActivationSymmetric"] = True
    ignore = list(ignore)
    keep = [m for m in fp32.module_nodes if m not in ignore]
    if modules is not None:
        wanted = set(modules)
        keep = [m for m in keep if m in wanted]
    excluded = _nodes(fp32.module_nodes, ignore)

    class Reader(_CalibReader, CalibrationDataReader):
        pass

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(
            str(fp32.path),
            str(path),
            Reader(bundle, spec, limit=calib, batch_size=calib_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=_nodes(fp32.module_nodes, keep),
            nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, method),
            extra_options=extra,
        )
    return _checked(fp32, path, "static", ignore, excluded)


def quantize_onnx_dynamic(
    fp32: OnnxFloat,
    path: str | Path,
    *,
    ignore: Iterable[str] = (),
    modules: Iterable[str] | None = None,
) -> OnnxQuantized:
    """Dynamic int8 with ONNX Runtime (int8 weights, per-batch activation ranges).

    Quantizes the Linear/Conv modules' MatMul/Gemm/Conv nodes (ORT also has dynamic Conv);
    ``modules`` restricts it to these modules (e.g. the Linear layers PyTorch's dynamic
    quantization covers, so the two backends quantize the same layers).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ignore = list(ignore)
    keep = [m for m in fp32.module_nodes if m not in ignore]
    if modules is not None:
        wanted = set(modules)
        keep = [m for m in keep if m in wanted]
    excluded = _nodes(fp32.module_nodes, ignore)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fp32.path),
            str(path),
            weight_type=QuantType.QInt8,
            nodes_to_quantize=_nodes(fp32.module_nodes, keep),
            nodes_to_exclude=excluded,
        )
    return _checked(fp32, path, "dynamic", ignore, excluded)


def inspect_layers(path: str | Path, module_nodes: dict[str, list[str]]) -> dict[str, dict]:
    """Per module, what the (quantized) graph shows around its MatMul/Gemm/Conv node.

    Quantizers rename what they touch (dynamic: ``node_MatMul_7`` -> ``node_MatMul_7_quant``, a
    ``MatMulInteger``; a Gemm may be split into ``<name>_MatMul`` + ``<name>_Add``), so a module's
    nodes are those named ``<original>`` or ``<original>_*``.

    Returns:
        module -> ``{"nodes": [...], "integer_ops": [...], "dq_inputs": int, "q_outputs": int,
        "int8": bool}``: the op types of integer nodes (``MatMulInteger``, ``ConvInteger``,
        ``QLinear*``...), the inputs of its MatMul/Gemm/Conv produced by ``DequantizeLinear``
        (static QDQ), and consumers that are ``QuantizeLinear``.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    report = {}
    for module, originals in module_nodes.items():
        found = [n for n in graph.node if any(_derived(n.name, o) for o in originals)]
        integer = [n.op_type for n in found if _is_integer_op(n.op_type)]
        weight_ops = [n for n in found if n.op_type in WEIGHT_OP_TYPES]
        dq = sum(
            1
            for n in weight_ops
            for i in n.input
            if i in producer and producer[i].op_type == "DequantizeLinear"
        )
        q = sum(
            1
            for n in weight_ops
            for o in n.output
            for c in consumers.get(o, [])
            if c.op_type == "QuantizeLinear"
        )
        report[module] = {
            "nodes": [n.name for n in found],
            "integer_ops": integer,
            "dq_inputs": dq,
            "q_outputs": q,
            "int8": bool(integer) or dq > 0,
        }
    return report


def _derived(name: str, original: str) -> bool:
    # ``node_conv2d_quant`` derives from ``node_conv2d``; ``node_conv2d_1`` is another node.
    if name == original:
        return True
    rest = name[len(original) + 1 :] if name.startswith(original + "_") else ""
    return bool(rest) and not rest[0].isdigit()


def _is_integer_op(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in (
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
        "DynamicQuantizeLSTM",
    )


def _checked(fp32: OnnxFloat, path: Path, mode: str, ignore: list[str], excluded: list[str]):
    # An ignored layer must read float inputs and weights (no DequantizeLinear in front, no
    # integer op). Its *output* may still meet a QuantizeLinear: that is the input quantization
    # of the next int8 layer, exactly as in the pt2e graph.
    report = inspect_layers(path, fp32.module_nodes)
    leaked = [m for m in ignore if report[m]["int8"]]
    if leaked:
        raise VitquantError(
            f"ONNX Runtime quantized ignored layers {', '.join(leaked)} (DequantizeLinear "
            "feeding their nodes): the module -> node mapping is wrong."
        )
    names = list(fp32.module_nodes)
    int8 = [m for m in names if report[m]["int8"]]
    return OnnxQuantized(
        path=path,
        mode=mode,
        int8_layers=int8,
        float_layers=[m for m in names if m not in int8],
        ignored=list(ignore),
        excluded_nodes=excluded,
    )


class OrtModel:
    """An ONNX Runtime CPU session callable like a model: ``logits = ort_model(x)``.

    Args:
        path: the ``.onnx`` file.
        threads: ``intra_op_num_threads`` (inter-op is 1, sequential execution).
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.path = Path(path)
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(out)
