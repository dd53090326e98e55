"""How much of a model's matrix work really runs in int8 kernels, from its runtime's profiler.

An "int8" artifact can still spend its time in float GEMMs: inductor without freezing folds the
dequantize into a float ``addmm``, a quantizer may leave attention's ``q @ k^T`` in float, a
runtime may not fuse a pattern. The only honest answer is the runtime's own profile. Each
runtime's profile is first turned into one neutral list of ``OpTime`` (operator name, self
time, calls):

- PyTorch / inductor: ``torch.profiler`` ``key_averages()`` (``from_torch_profiler``); self
  time, so ``aten::linear`` does not count again the ``aten::addmm`` it calls;
- ONNX Runtime: the JSON of ``SessionOptions.enable_profiling`` (``from_ort_events``): node
  events ``<node>_kernel_time`` grouped by their ``op_name``;
- ExecuTorch: the ETDump of the run read by ``executorch.devtools.Inspector``
  (``from_etdump_events``), whose XNNPACK delegate events name the kernel and its data types
  (``Fully Connected (NC, QDU8, F32, QC8W) GEMM``);
- OpenVINO: the CPU plugin's per-node profiling (``from_openvino_profile``), named
  ``ov:<node type>:<exec type>`` (``ov:FullyConnected:brgemm_avx512_amx_I8``); the exec type
  ends in the precision the kernel ran in. A fused ``Subgraph`` is counted as matrix work only
  when it runs in int8 (the attention block), since float subgraphs are element-wise fusions.

``op_class`` then sorts an operator into ``int8`` (an integer GEMM/conv kernel), ``float`` (a
float GEMM/conv/batched matmul, attention included) or ``other`` (LayerNorm, softmax, GELU,
copies, ...), and ``kernel_share`` is ``int8 / (int8 + float)`` self time: the share of the
matrix work done in int8. It is None (``unknown``) when the profile shows no matrix kernel at
all, e.g. inductor's ``cpp_wrapper``, which calls its kernels without the dispatcher.
``top_ops`` lists where the time goes, so what limits an int8 path (float attention, LayerNorm,
GELU, quantize/dequantize) is visible.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# A share at or above this is an int8 row; under it (and above 0) ``partial``.
INT8_SHARE = 0.9

# Integer kernels: PyTorch (oneDNN via inductor, fbgemm/oneDNN eager, torchao), ONNX Runtime.
_INT8_PATTERNS = (
    r"^onednn::q(linear|conv)",  # inductor x86 lowering of pt2e int8 graphs
    r"^quantized::(linear|conv)",  # eager static/dynamic int8 modules
    r"^aten::_int_mm$",
    r"^aten::_weight_int8pack_mm$",
    r"^aten::_(convert_)?weight_int4pack",
    r"^(MatMulInteger|MatMulIntegerToFloat|DynamicQuantizeMatMul|QGemm|QAttention)$",
    r"^(QLinear(MatMul|Conv|Gemm)|ConvInteger|DynamicQuantizeLSTM|QOrderedMatMul)$",
)
# Float matrix kernels: the GEMMs a Linear/Conv becomes and the batched matmuls of attention.
_FLOAT_PATTERNS = (
    r"^aten::(addmm|mm|bmm|baddbmm|addbmm|matmul|linear|_addmm_activation|dot|mv)$",
    r"^aten::(conv\d?d|_convolution|convolution|mkldnn_convolution|_mkl_linear|mkldnn_linear)$",
    r"^aten::_scaled_dot_product\w*",
    r"^mkldnn::_linear_pointwise",
    r"^(MatMul|Gemm|Conv|FusedMatMul|FusedGemm|FusedConv|Attention|MultiHeadAttention)$",
)
# XNNPACK kernel names carry their data types: ``Fully Connected (NC, QDU8, F32, QC8W) GEMM``.
_XNN_MATRIX = re.compile(r"(Fully Connected|Convolution|Batch Matrix Multiply|Deconvolution)")
_XNN_INT8 = re.compile(r"\b(QS8|QU8|QD8|QDU8|QP8|QC8W|QC4W|QB4W)\b")
# ETDump events that contain others (their time is their children's): not operators.
ETDUMP_CONTAINERS = ("DELEGATE_CALL", "OPERATOR_CALL", "Method::execute")


@dataclass(frozen=True)
class OpTime:
    """One operator's total self time in a profile.

    Attributes:
        name: operator name as the runtime reports it (``aten::addmm``, ``MatMulInteger``...).
        self_us: self time in microseconds, summed over ``calls``.
        calls: how many times it ran.
    """

    name: str
    self_us: float
    calls: int = 1


@dataclass(frozen=True)
class KernelShare:
    """Int8 share of a profile's matrix work.

    Attributes:
        int8_us: self time in integer GEMM/conv kernels.
        float_us: self time in float GEMM/conv/attention kernels.
        other_us: everything else.
        share: ``int8_us / (int8_us + float_us)``; None when neither was seen.
        label: ``int8`` (share >= 0.9), ``partial`` (0 < share < 0.9), ``float`` (share 0),
            ``unknown`` (no matrix kernel in the profile).
    """

    int8_us: float
    float_us: float
    other_us: float
    share: float | None
    label: str

    def to_dict(self) -> dict:
        return asdict(self)


_OV_MATRIX = re.compile(
    r"^ov:(FullyConnected\w*|MatMul|Convolution|GroupConvolution|ScaledDotProductAttention):"
)
_OV_INT8 = re.compile(r"_(i8|u8)$", re.IGNORECASE)


def op_class(name: str) -> str:
    """``int8``, ``float`` or ``other`` for an operator name from any supported runtime."""
    if name.startswith("ov:"):
        if name.startswith("ov:Subgraph:"):
            return "int8" if _OV_INT8.search(name) else "other"
        if _OV_MATRIX.search(name):
            return "int8" if _OV_INT8.search(name) else "float"
        return "other"
    if _XNN_MATRIX.search(name):
        return "int8" if _XNN_INT8.search(name) else "float"
    if any(re.search(p, name) for p in _INT8_PATTERNS):
        return "int8"
    if any(re.search(p, name) for p in _FLOAT_PATTERNS):
        return "float"
    return "other"


def share_label(share: float | None) -> str:
    """The row label of a share (see ``KernelShare.label``)."""
    if share is None:
        return "unknown"
    if share >= INT8_SHARE:
        return "int8"
    return "partial" if share > 0 else "float"


def kernel_share(ops: Iterable[OpTime]) -> KernelShare:
    """Sum self time by ``op_class`` and return the int8 share of the matrix work."""
    totals = {"int8": 0.0, "float": 0.0, "other": 0.0}
    for op in ops:
        totals[op_class(op.name)] += op.self_us
    matrix = totals["int8"] + totals["float"]
    share = totals["int8"] / matrix if matrix > 0 else None
    return KernelShare(totals["int8"], totals["float"], totals["other"], share, share_label(share))


def merge(ops: Iterable[OpTime]) -> list[OpTime]:
    """Ops with the same name summed (self time and calls), in first-seen order."""
    out: dict[str, list[float]] = {}
    for op in ops:
        acc = out.setdefault(op.name, [0.0, 0])
        acc[0] += op.self_us
        acc[1] += op.calls
    return [OpTime(name, us, int(calls)) for name, (us, calls) in out.items()]


def top_ops(ops: Iterable[OpTime], k: int = 15) -> list[dict]:
    """The ``k`` operators with the most self time: name, class, ms, calls, share of the total."""
    merged = merge(ops)
    total = sum(op.self_us for op in merged) or 1.0
    ranked = sorted(merged, key=lambda op: -op.self_us)[:k]
    return [
        {
            "op": op.name,
            "class": op_class(op.name),
            "self_ms": op.self_us / 1000.0,
            "calls": op.calls,
            "share_of_time": op.self_us / total,
        }
        for op in ranked
    ]


# ---------------------------------------------------------------------------------------------
# Each runtime's profile -> OpTime list (pure functions over the profiler's own records)


def from_torch_profiler(averages: Iterable) -> list[OpTime]:
    """``torch.profiler`` ``key_averages()`` entries (``key``, ``self_cpu_time_total`` in us,
    ``count``) as ``OpTime``; inductor's ``## Call CompiledFxGraph ##`` wrapper keeps the self
    time of the fused kernels it runs without profiler events."""
    return [
        OpTime(str(e.key), float(e.self_cpu_time_total), int(e.count))
        for e in averages
        if e.self_cpu_time_total > 0
    ]


def from_ort_events(events: Iterable[dict], *, skip_runs: int = 0) -> list[OpTime]:
    """ONNX Runtime profiling JSON records as ``OpTime`` by operator type.

    Kernel records are ``{"cat": "Node", "name": "<node>_kernel_time", "ts": us, "dur": us,
    "args": {"op_name": "MatMulInteger", ...}}``; session records and the fence events around
    each kernel are skipped. ``skip_runs``: kernels inside the first ``skip_runs`` ``model_run``
    session records (warm-up) are left out.
    """
    events = list(events)
    runs = sorted(
        (float(e.get("ts", 0)), float(e.get("ts", 0)) + float(e.get("dur", 0)))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    skipped = runs[:skip_runs]
    ops = []
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        ts = float(ev.get("ts", 0))
        if any(start <= ts <= end for start, end in skipped):
            continue
        op = (ev.get("args") or {}).get("op_name") or "unknown"
        ops.append(OpTime(str(op), float(ev.get("dur", 0.0)), 1))
    return merge(ops)


def from_etdump_events(events: Iterable[tuple[str, float, int]]) -> list[OpTime]:
    """ETDump ``(name, total ms, runs)`` events as ``OpTime``, without the container events
    (``DELEGATE_CALL``...) whose time is that of the kernels inside them."""
    return merge(
        OpTime(re.sub(r" #\d+$", "", name), ms * 1000.0, runs)  # "GEMM #2": a second instance
        for name, ms, runs in events
        if name not in ETDUMP_CONTAINERS
    )


def from_openvino_profile(items: Iterable[tuple[str, str, float]]) -> list[OpTime]:
    """OpenVINO ``(node type, exec type, seconds)`` per node as ``OpTime`` named
    ``ov:<node type>:<exec type>`` (nodes that did not run, ``undef``, dropped)."""
    return merge(
        OpTime(f"ov:{node}:{exec_type}", seconds * 1e6)
        for node, exec_type, seconds in items
        if exec_type and exec_type != "undef" and seconds > 0
    )


# ---------------------------------------------------------------------------------------------
# Profiling runs (one per runtime): a runner and an input in, OpTime list out


@torch.no_grad()
def profile_torch(fn: Callable[[torch.Tensor], object], x: torch.Tensor, *, iters: int = 1):
    """Self time per operator of ``iters`` calls of ``fn(x)`` (call it once before: warm-up
    and compilation are not profiled), as ``OpTime`` totals over the calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn(x)
    return from_torch_profiler(prof.key_averages())


def profile_ort(path: str | Path, x: torch.Tensor, *, threads: int, iters: int = 1):
    """Self time per operator type of ``iters`` runs of the ONNX model at ``path`` in a fresh
    profiling session (same threads and options as ``OrtModel``), after one warm-up run."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.numpy())}
        for _ in range(iters + 1):  # the first run is warm-up, dropped below
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return from_ort_events(events, skip_runs=1)


def profile_pte(path: str | Path, x: torch.Tensor, *, threads: int | None, iters: int = 1):
    """Self time per kernel of ``iters`` runs of an ExecuTorch program, from its ETDump.

    The program is loaded with ``enable_etdump``; XNNPACK reports each kernel it runs inside
    its delegate (``Fully Connected (NC, QDU8, F32, QC8W) GEMM``), portable kernels appear as
    ``native_call_<op>``. The first run (warm-up) is part of the dump and is dropped.
    """
    from vitquant.quant.executorch_backend import set_runtime_threads

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib

    set_runtime_threads(threads)
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True)
    # A program is planned for a bounded batch: larger inputs run in chunks, as in ``PteModel``.
    bound = int(module.method_meta("forward").input_tensor_meta(0).sizes()[0])
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for _ in range(iters + 1):
            for start in range(0, len(x), bound):
                module.forward([x[start : start + bound].contiguous()])
        dump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(dump))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=str(dump))
    events = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for ev in block.events:
            raw = list(ev.perf_data.raw) if ev.perf_data is not None else []
            # one entry per forward call: drop the first run's (warm-up), chunks included
            raw = raw[len(raw) // (iters + 1) :] if len(raw) > iters else raw
            events.append((ev.name, float(sum(raw)), len(raw)))
    return from_etdump_events(events)


def profile_openvino(path: str | Path, x: torch.Tensor, *, threads: int | None, iters: int = 1):
    """Self time per node kind of ``iters`` runs of an OpenVINO IR, compiled with ``PERF_COUNT``
    (same options as ``OvModel``), after one warm-up run."""
    from vitquant.quant.openvino_backend import OvModel

    model = OvModel(path, threads=threads, profile=True)
    model(x)
    ops: list[OpTime] = []
    for _ in range(iters):
        model(x)
        ops.extend(from_openvino_profile(model.profile()))
    return merge(ops)
