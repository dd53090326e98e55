"""OpenVINO: the float model converted (``openvino.convert_model``), quantized by NNCF's static
post-training quantization, saved as OpenVINO IR (``.xml`` + ``.bin``) and run by its CPU plugin.

Why it is here: on the DeiT-S benchmark (``benchmarks/deit_s_cpu.py``) it is the fastest int8
path. NNCF's transformer recipe (``nncf.ModelType.TRANSFORMER``) also quantizes the attention
matmuls, and OpenVINO's CPU plugin runs them, the Linear layers and the convolution in int8
kernels (AMX or VNNI where the CPU has them), where inductor's path keeps attention in float.

Names: converted from PyTorch, every operation's friendly name starts with
``__module.<module name>/`` (``__module.blocks.0.attn.qkv/aten::linear/MatMul``), so the ignore
list becomes NNCF ``IgnoredScope`` patterns on module names, and a module is int8 when its
MatMul/Convolution reads a ``FakeQuantize`` output (the quantized activation) - read back from
the quantized model, not assumed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quiet import is_quiet

MATRIX_OPS = ("MatMul", "Convolution", "GroupConvolution")


def require_openvino():
    """``openvino`` and ``nncf``, or a ``VitquantError`` naming the fix. NNCF resets its logger
    to INFO when imported, so in quiet mode (``vitquant.quiet``) it is lowered again here."""
    try:
        import nncf
        import openvino
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise VitquantError(
            f"OpenVINO rows need openvino and nncf ({exc}); pip install openvino nncf."
        ) from exc
    if is_quiet():
        nncf.set_log_level(logging.ERROR)
    core()  # before NNCF makes its own: see ``core``
    return openvino, nncf


@functools.cache
def core():
    """The process' one ``openvino.Core``, with its CPU plugin loaded; never released.

    Each Core's CPU plugin installs its own alternate signal stack on the thread that loads it
    and, when the Core is destroyed, puts back the stack it found. Cores released out of order
    (one per model, NNCF's own during calibration) leave the thread's alternate stack pointing at
    freed memory, and the next signal with an ``SA_ONSTACK`` handler - Python's SIGCHLD handler,
    which PyTorch's DataLoader installs, fires when any subprocess exits - segfaults the process
    or corrupts its heap (measured: ``tests/test_openvino_signals.py``). One Core created before
    any other and kept for the process' life keeps every later Core nested inside it.
    """
    import openvino

    shared = openvino.Core()
    shared.get_property("CPU", "FULL_DEVICE_NAME")  # loads the plugin now: its stack comes first
    return shared


@contextlib.contextmanager
def _hushed():
    """Quiet mode: the trace warnings of the conversion and NNCF's progress bars (printed on
    stdout/stderr by rich) kept off the terminal; verbose mode shows them."""
    if not is_quiet():
        yield
        return
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def module_pattern(name: str) -> str:
    """The regex of every OpenVINO operation converted from module ``name`` (and its children)."""
    return rf"__module\.{re.escape(name)}(\.|/).*"


def module_of(op_name: str) -> str | None:
    """``__module.blocks.0.attn.qkv/aten::linear/MatMul`` -> ``blocks.0.attn.qkv``."""
    m = re.match(r"__module\.([^/]+)/", op_name)
    return m.group(1) if m else None


def convert(model: nn.Module, example: torch.Tensor):
    """The float model as an OpenVINO model with a dynamic batch dimension."""
    ov, _ = require_openvino()
    with torch.no_grad(), _hushed():
        converted = ov.convert_model(model.eval(), example_input=example)
    converted.reshape([-1, *example.shape[1:]])
    return converted


def named_modules(ov_model, modules: Sequence[str]) -> list[str]:
    """The ``modules`` that have a MatMul/Convolution named after them in ``ov_model``."""
    seen = {
        module_of(op.get_friendly_name())
        for op in ov_model.get_ops()
        if op.get_type_name() in MATRIX_OPS
    }
    return [m for m in modules if m in seen]


def int8_modules(ov_model, modules: Sequence[str]) -> list[str]:
    """The ``modules`` whose MatMul/Convolution reads a ``FakeQuantize`` output, in order."""
    quantized = set()
    for op in ov_model.get_ops():
        if op.get_type_name() not in MATRIX_OPS:
            continue
        sources = {i.get_source_output().get_node().get_type_name() for i in op.inputs()}
        if "FakeQuantize" in sources and (name := module_of(op.get_friendly_name())):
            quantized.add(name)
    return [m for m in modules if m in quantized]


def save_ir(ov_model, path: Path) -> Path:
    """``ov.save_model`` to ``path`` (``.xml``) and its ``.bin``, both moved into place only
    when complete (written to a temporary folder beside them first)."""
    ov, _ = require_openvino()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ov-") as tmp:
        tmp_xml = Path(tmp) / path.name
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp_xml, path)
    return path


@dataclass
class OvQuantized:
    """An NNCF-quantized OpenVINO model and what it holds.

    Attributes:
        path: the ``.xml`` (its ``.bin`` beside it).
        int8_layers / float_layers: quantizable module names by what the model shows.
        ignored: module names asked to stay float (checked to be float).
        model_type: NNCF's model type (``transformer`` when the model has attention).
        calib_images: calibration images used.
    """

    path: Path
    int8_layers: list[str]
    float_layers: list[str]
    ignored: list[str] = field(default_factory=list)
    model_type: str | None = None
    calib_images: int = 0


def calibration_batches(bundle, spec, *, calib: int | None, batch: int) -> list[np.ndarray]:
    """The ``calib`` role's images (the first ``calib`` of them) as NumPy batches."""
    out, seen = [], 0
    for x, _ in bundle.batches("calib", spec, batch_size=batch):
        if calib is not None and seen >= calib:
            break
        take = x if calib is None else x[: calib - seen]
        out.append(take.numpy())
        seen += len(take)
    if not out:
        raise VitquantError("OpenVINO static quantization needs calibration images (--calib).")
    return out


def quantize_openvino(
    model: nn.Module,
    bundle,
    spec,
    path: str | Path,
    *,
    modules: Sequence[str],
    ignore: Iterable[str] = (),
    calib: int | None = 256,
    calib_batch: int = 32,
) -> OvQuantized:
    """Convert ``model``, quantize it with NNCF (static, on ``calib`` images) and save the IR.

    Args:
        modules: the quantizable module names (Linear/Conv) to report on.
        ignore: module names kept float (an NNCF ``IgnoredScope`` of their operations).
        calib, calib_batch: calibration images and batch size.

    Raises:
        VitquantError: a layer has no operation named after it in the converted model (Conv+BN
            fused under a new name), or an ignored module is int8 in the result.
    """
    _, nncf = require_openvino()
    ignore = list(ignore)
    batches = calibration_batches(bundle, spec, calib=calib, batch=calib_batch)
    float_model = convert(model, torch.from_numpy(batches[0][:2]))
    unnamed = [m for m in modules if m not in named_modules(float_model, modules)]
    if unnamed:
        raise VitquantError(
            f"OpenVINO renamed {len(unnamed)} layer(s) while converting ({', '.join(unnamed[:4])}"
            f"{', ...' if len(unnamed) > 4 else ''}: a Conv followed by BatchNorm is fused "
            "under a new name), so an ignore list could not be honoured nor the int8 layers "
            "read back; no OpenVINO twin for this model."
        )
    attention_ops = ("Softmax", "ScaledDotProductAttention")
    has_attention = any(op.get_type_name() in attention_ops for op in float_model.get_ops())
    model_type = nncf.ModelType.TRANSFORMER if has_attention else None
    scope = nncf.IgnoredScope(patterns=[module_pattern(n) for n in ignore], validate=False)
    with _hushed():
        quantized = nncf.quantize(
            float_model,
            nncf.Dataset(batches),
            model_type=model_type,
            subset_size=len(batches),  # NNCF counts dataset items, here batches
            ignored_scope=scope,
        )
    int8 = int8_modules(quantized, modules)
    leaked = [n for n in ignore if n in int8]
    if leaked:
        raise VitquantError(f"OpenVINO: ignored module(s) {leaked} came out int8.")
    save_ir(quantized, Path(path))
    return OvQuantized(
        path=Path(path),
        int8_layers=int8,
        float_layers=[m for m in modules if m not in int8],
        ignored=ignore,
        model_type="transformer" if has_attention else None,
        calib_images=sum(len(b) for b in batches),
    )


class OvModel:
    """An OpenVINO IR compiled for the CPU: ``model(x) -> logits`` on torch tensors.

    Float operations run in f32 (``INFERENCE_PRECISION_HINT``): OpenVINO would otherwise pick
    bf16 on CPUs with AMX-BF16 and change the fp32 row's numerics.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, profile: bool = False):
        require_openvino()
        path = Path(path)
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise VitquantError(f"OpenVINO model not found: {path} (and its .bin).")
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if profile:
            config["PERF_COUNT"] = True
        try:
            self.compiled = core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            raise VitquantError(f"OpenVINO could not load {path}: {str(exc)[:300]}") from exc
        self.request = self.compiled.create_infer_request()
        self.path, self.threads = path, threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer(x.detach().contiguous().numpy())
        return torch.from_numpy(np.array(out[0]))

    def eval(self) -> OvModel:  # the evaluation helpers call .eval() on every runner
        return self

    def profile(self) -> list[tuple[str, str, float]]:
        """``(node type, exec type, seconds)`` of the last inference (needs ``profile=True``)."""
        return [
            (p.node_type, p.exec_type, p.real_time.total_seconds())
            for p in self.request.profiling_info
        ]
