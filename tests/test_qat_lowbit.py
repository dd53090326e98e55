"""Low-bit QAT: the backend quantizer's ranges narrowed to W/A bits (``lowbit.narrow``), per-layer
rules, the `qat` command's simulated row, and the pipeline's QAT step at a low-bit target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from test_quant_cli import run  # `python -m vitquant ...` in a subprocess
from vitquant.errors import VitquantError
from vitquant.quant.lowbit.bits import BitSetting, BitsPlan
from vitquant.quant.lowbit.narrow import bits_overrides, is_low_bit
from vitquant.quant.qat import QATConfig

EPS = 2**-12  # the x86 config's observer eps


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(12, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))


F32 = np.float32


def fake_quant_act(x: np.ndarray, bits: int, calib: np.ndarray) -> np.ndarray:
    """Min-max per-tensor asymmetric fake quantization of ``x`` with the range of ``calib``
    (MinMaxObserver's arithmetic, in float32)."""
    lo, hi = F32(min(calib.min(), 0.0)), F32(max(calib.max(), 0.0))
    qmax = 2**bits - 1
    scale = F32(max((hi - lo) / F32(qmax), EPS))
    zp = int(np.clip(0 - np.round(lo / scale), 0, qmax))
    q = np.clip(np.round(x * (F32(1) / scale)) + zp, 0, qmax).astype(F32)
    return (q - zp) * scale


def fake_quant_weight(w: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric per-output-channel fake quantization on the grid +-(2^(b-1)-1) (float32)."""
    qmax = 2 ** (bits - 1) - 1 if bits < 8 else 127.5  # int8: (127 - -128) / 2
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True) / F32(qmax), F32(EPS)).astype(F32)
    lo, hi = (-qmax, qmax) if bits < 8 else (-128, 127)
    return (np.clip(np.round(w * (F32(1) / scale)), lo, hi) * scale).astype(F32)


def test_narrowed_x86_ptq_equals_a_numpy_fake_quant_at_w4a4_with_an_8_bit_head():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from vitquant.quant.pt2e import export_model, make_quantizer

    model = TwoLinear().eval()
    x = torch.randn(64, 12)
    plan = BitsPlan.from_texts(BitSetting(4, 4), ["head=8/8"])
    quantizer = make_quantizer(backend="x86", plan=plan, layers=["fc", "head"])
    prepared = prepare_pt2e(export_model(model, x), quantizer)
    prepared(x)
    got = convert_pt2e(prepared)(x).detach().numpy()

    # the same arithmetic by hand: 4-bit fc (input and weight), 8-bit head
    xs = x.numpy()
    w1, b1 = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    w2, b2 = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    h = np.maximum(fake_quant_act(xs, 4, xs) @ fake_quant_weight(w1, 4).T + b1, 0)
    h_float = np.maximum(xs @ w1.T + b1, 0)  # calibration observes float activations
    want = fake_quant_act(h, 8, h_float) @ fake_quant_weight(w2, 8).T + b2
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    # and 4 bits really cost something against float, so the check is not vacuous
    assert np.abs(model(x).detach().numpy() - want).max() > 1e-2


def test_rules_become_per_layer_overrides_and_ignored_layers_stay_float():
    plan = BitsPlan.from_texts(BitSetting(4, 4), ["blocks.0.*=8/8", "head=6/6"])
    layers = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.mlp.fc1", "head"]
    assert bits_overrides(plan, layers) == {
        "blocks.0.attn.qkv": BitSetting(8, 8),
        "blocks.0.mlp.fc1": BitSetting(8, 8),
        "head": BitSetting(6, 6),
    }
    assert set(bits_overrides(plan, layers, ignore=["blocks.0"])) == {"head"}
    assert is_low_bit(BitsPlan(BitSetting(8, 8), (("head", BitSetting(8, 4)),)))
    assert not is_low_bit(BitsPlan())


def test_qat_config_validates_bits():
    assert QATConfig(wbits=4, abits=6).bits_label == "W4A6" and QATConfig(wbits=4).low_bit
    assert not QATConfig().low_bit
    with pytest.raises(VitquantError, match="GLOB=W/A"):
        QATConfig(bits=("head=8",))
    with pytest.raises(VitquantError, match="from 2 to 8"):
        QATConfig(wbits=1)


def _weight_ranges(pt2: str) -> dict[str, tuple[int, int]]:
    """Parameter name -> (quant_min, quant_max) of each per-channel weight in a saved graph."""
    from vitquant.quant.artifacts import load_pt2e

    gm = load_pt2e(pt2)
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and "dequantize_per_channel" in str(node.target):
            out[node.args[0].target] = (node.args[4], node.args[5])
    return out


def test_qat_command_trains_at_low_bits_and_reports_a_simulated_row(tmp_path, digits_models):
    from vitquant.data import load_data
    from vitquant.evaluate import accuracy
    from vitquant.quant.artifacts import load_pt2e
    from vitquant.registry import load_model

    out = tmp_path / "qat"
    proc = run(
        "qat",
        "digits_cnn",
        "--wbits",
        "3",
        "--abits",
        "4",
        "--bits",
        "fc=8/8",
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "qat.json").read_text())
    assert doc["config"]["wbits"] == 3 and doc["config"]["bits"] == ["fc=8/8"]
    rows = {(r["variant"], r["backend"]): r for r in doc["results"]}
    assert set(rows) == {("fp32", "pytorch"), ("qat", "pt2e-lowbit")}
    row = rows[("qat", "pt2e-lowbit")]
    assert row["simulated"] and row["latency_ms_per_image"] is None
    assert doc["artifacts"]["onnx"] is None and doc["artifacts"]["pte"] is None
    # the saved graph holds 3-bit conv weights and an 8-bit fc
    ranges = sorted(_weight_ranges(doc["artifacts"]["pt2"]).values())
    assert ranges == [(-128, 127)] + [(-3, 3)] * 3
    # and the row's accuracy is what the saved graph scores on the test split
    gm = load_pt2e(doc["artifacts"]["pt2"])
    cnn = load_model("digits_cnn")
    assert row["accuracy"] == pytest.approx(accuracy(gm, load_data("digits"), "test", cnn.spec))


def test_qat_refuses_pte_export_at_low_bits_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = run(
        "qat",
        "digits_cnn",
        "--quantizer",
        "xnnpack",
        "--export",
        "pte",
        "--wbits",
        "4",
        "--out",
        str(out),
    )
    assert proc.returncode == 2 and "simulated" in " ".join(proc.stderr.split())
    assert not out.exists()


def test_pipeline_runs_qat_at_the_low_bit_target(tmp_path, digits_models):
    out = tmp_path / "pipe"
    proc = run(
        "pipeline",
        "digits_cnn",
        "--wbits",
        "3",
        "--abits",
        "4",
        "--max-drop",
        "100",
        "--force-qat",
        "--trials",
        "1",
        "--qat-epochs",
        "1",
        "--qat-train-limit",
        "128",
        "--calib",
        "64",
        "--val",
        "100",
        "--limit",
        "100",
        "--stats-images",
        "64",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "pipeline.json").read_text())
    qat = next(d for d in doc["decisions"] if d["step"] == "qat")
    assert qat["status"] != "skip" and "(forced)" in qat["reason"]
    row = next(r for r in doc["results"] if r["variant"] == "qat")
    assert row["backend"] == "pt2e-lowbit" and row["simulated"]
    assert row["latency_ms_per_image"] is None
    assert row["extra"]["config"]["wbits"] == 3 and row["extra"]["config"]["abits"] == 4
    ranges = set(_weight_ranges(row["artifact"]).values())
    assert ranges == {(-3, 3)}  # every conv and the fc at 3 bits
