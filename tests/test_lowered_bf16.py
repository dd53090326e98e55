"""int8-mixed-bf16: the lowered x86 graph runs its float operators in bf16 on a CPU with native
bf16, and the choice is recorded and can be overridden (``--x86-float``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitquant.analysis.weights import sqnr_db
from vitquant.cli.options import X86Float
from vitquant.data import load_data
from vitquant.quant.backends import get_backend
from vitquant.quant.lowered import FLOAT_OPS, LoweredModel, native_bf16, resolve_float_ops
from vitquant.quant.pt2e import quantize_static
from vitquant.registry import load_model


def cpu_flags() -> set[str]:
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return flags


def test_native_bf16_follows_the_cpu_flags():
    flags = cpu_flags()
    assert native_bf16() == bool({"amx_tile", "avx512_bf16"} & flags)


def test_float_ops_resolve_and_match_the_cli_choices():
    assert resolve_float_ops("fp32") == "fp32"
    assert resolve_float_ops("bf16") == "bf16"
    assert resolve_float_ops("auto") == ("bf16" if native_bf16() else "fp32")
    with pytest.raises(ValueError, match="float_ops must be one of"):
        resolve_float_ops("fp16")
    assert tuple(c.value for c in X86Float) == FLOAT_OPS


@pytest.mark.skipif(not native_bf16(), reason="bf16 would be emulated (and slow) on this CPU")
def test_bf16_lowering_rounds_the_float_ops_but_keeps_the_predictions(digits_models):
    """The x86 backend's default lowering (``auto`` = bf16 here) differs from the all-fp32 one
    by bf16 rounding only: not bit-identical, logit SQNR above 25 dB, same top-1 on >= 95%."""
    digits = load_data("digits")
    vit = load_model("digits_vit")
    qm = quantize_static(vit.model, digits, vit.spec)
    x, _ = next(digits.batches("test", vit.spec, batch_size=32))
    backend = get_backend("x86")
    assert backend.float_ops == "auto"
    lowered = backend.lower(qm.module)  # compiles on its first call
    assert not lowered.simulated and lowered.extra["float_ops"] == "bf16"
    assert "bf16" in lowered.extra["timed"]
    fp32 = LoweredModel(qm, float_ops="fp32")(x)
    bf16 = lowered.runner(x)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)
    assert sqnr_db(fp32.numpy(), bf16.numpy()) > 25.0
    agree = np.mean(bf16.argmax(1).numpy() == fp32.argmax(1).numpy())
    assert agree >= 0.95


def test_cpp_wrapper_lowering_gives_the_python_wrappers_logits(digits_models, monkeypatch):
    """``--x86-cpp-wrapper`` changes how inductor calls the kernels, not which: the logits match
    the Python wrapper's, and the row says which wrapper was timed."""
    digits = load_data("digits")
    cnn = load_model("digits_cnn")
    qm = quantize_static(cnn.model, digits, cnn.spec)
    x, _ = next(digits.batches("test", cnn.spec, batch_size=32))
    backend = get_backend("x86")
    monkeypatch.setattr(backend, "cpp_wrapper", True)
    monkeypatch.setattr(backend, "float_ops", "fp32")
    lowered = backend.lower(qm.module)  # compiles on its first call
    assert not lowered.simulated and "C++ wrapper" in lowered.extra["timed"]
    python_wrapper = LoweredModel(qm, float_ops="fp32")(x)
    torch.testing.assert_close(lowered.runner(x), python_wrapper, atol=1e-4, rtol=1e-4)
