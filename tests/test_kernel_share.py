"""Int8 kernel share: operator classes, shares on hand-made profiles, and real profiler runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitquant.quant import kernel_share as ks
from vitquant.quant.kernel_share import OpTime


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("onednn::qlinear_pointwise", "int8"),
        ("onednn::qconv_pointwise", "int8"),
        ("quantized::linear_dynamic", "int8"),
        ("aten::_weight_int8pack_mm", "int8"),
        ("MatMulInteger", "int8"),
        ("DynamicQuantizeMatMul", "int8"),
        ("QLinearMatMul", "int8"),
        ("Fully Connected (NC, QDU8, F32, QC8W) GEMM", "int8"),
        ("Convolution (NHWC, QS8, QS8, QC8W) IGEMM", "int8"),
        ("aten::addmm", "float"),
        ("aten::bmm", "float"),
        ("aten::mkldnn_convolution", "float"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "float"),
        ("MatMul", "float"),
        ("Gemm", "float"),
        ("Fully Connected (NC, F32) GEMM", "float"),
        ("Batch Matrix Multiply (NC, F32) GEMM", "float"),
        ("aten::native_layer_norm", "other"),
        ("aten::gelu", "other"),
        ("Softmax (NC, F32)", "other"),
        ("DynamicQuantizeLinear", "other"),
        ("## Call CompiledFxGraph abc ##", "other"),
        ("aten::matmul_backward", "other"),
        ("ov:FullyConnected:brgemm_avx512_amx_I8", "int8"),
        ("ov:FullyConnectedQuantizedLegacy:brgemm_avx512_amx_i8", "int8"),
        ("ov:Convolution:brgconv_avx512_amx_I8", "int8"),
        ("ov:Subgraph:jit_avx512_i8", "int8"),  # the int8 attention block
        ("ov:Subgraph:jit_avx512_f32", "other"),  # an element-wise fusion
        ("ov:FullyConnected:brgemm_avx512_f32", "float"),
        ("ov:MatMul:brgemm_avx512_f32", "float"),
        ("ov:MVN:jit_avx512_f32", "other"),
        ("ov:FakeQuantize:jit_avx512_f32", "other"),
    ],
)
def test_op_class(name, expected):
    assert ks.op_class(name) == expected


def test_share_of_a_hand_made_profile():
    ops = [
        OpTime("onednn::qlinear_pointwise", 300.0, 48),
        OpTime("aten::_scaled_dot_product_flash_attention_for_cpu", 60.0, 12),
        OpTime("aten::addmm", 40.0, 1),
        OpTime("aten::native_layer_norm", 500.0, 25),
        OpTime("aten::linear", 100.0, 1),  # its self time only: the addmm is counted apart
    ]
    share = ks.kernel_share(ops)
    assert share.int8_us == 300.0
    assert share.float_us == 60.0 + 40.0 + 100.0
    assert share.other_us == 500.0
    assert share.share == pytest.approx(300.0 / 500.0)
    assert share.label == "partial"


@pytest.mark.parametrize(
    ("ops", "share", "label"),
    [
        ([OpTime("quantized::linear_dynamic", 90.0), OpTime("aten::bmm", 10.0)], 0.9, "int8"),
        ([OpTime("MatMulInteger", 89.0), OpTime("MatMul", 11.0)], 0.89, "partial"),
        ([OpTime("aten::addmm", 5.0), OpTime("aten::gelu", 5.0)], 0.0, "float"),
        (
            [OpTime("aten::gelu", 5.0), OpTime("## Call CompiledFxGraph x ##", 50.0)],
            None,
            "unknown",
        ),
        ([], None, "unknown"),
    ],
)
def test_share_labels(ops, share, label):
    got = ks.kernel_share(ops)
    assert got.share == (pytest.approx(share) if share is not None else None)
    assert got.label == label


def test_top_ops_merge_and_rank():
    ops = [
        OpTime("a", 10.0, 1),
        OpTime("MatMul", 30.0, 2),
        OpTime("a", 20.0, 3),
        OpTime("b", 40.0, 1),
    ]
    top = ks.top_ops(ops, 2)
    assert [t["op"] for t in top] == ["b", "a"]  # b 40 us, a 10 + 20 us, MatMul 30 us
    assert top[1]["calls"] == 4
    assert top[1]["self_ms"] == pytest.approx(0.030)
    assert top[0]["share_of_time"] == pytest.approx(40.0 / 100.0)
    assert sum(t["share_of_time"] for t in ks.top_ops(ops, 10)) == pytest.approx(1.0)


def test_ort_events_skip_the_warm_up_run():
    def node(op, ts, dur):
        return {"cat": "Node", "name": f"n_{op}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}  # fmt: skip

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        node("MatMul", 10, 70),  # the warm-up run: dropped
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node("MatMulInteger", 210, 30),
        {"cat": "Node", "name": "n_MatMulInteger_fence_before", "ts": 209, "dur": 0},
        node("MatMul", 250, 10),
        node("LayerNormalization", 270, 20),
        {"cat": "Session", "name": "SequentialExecutor::Execute", "ts": 200, "dur": 99},
    ]
    ops = ks.from_ort_events(events, skip_runs=1)
    assert {op.name: (op.self_us, op.calls) for op in ops} == {
        "MatMulInteger": (30.0, 1),
        "MatMul": (10.0, 1),
        "LayerNormalization": (20.0, 1),
    }
    assert ks.kernel_share(ops).share == pytest.approx(30.0 / 40.0)
    assert sum(op.self_us for op in ks.from_ort_events(events)) == 130.0  # nothing skipped


def test_etdump_events_drop_containers_and_merge_instances():
    events = [
        ("DELEGATE_CALL", 5.0, 2),
        ("Fully Connected (NC, QDU8, F32, QC8W) GEMM #1", 1.0, 2),
        ("Fully Connected (NC, QDU8, F32, QC8W) GEMM #2", 0.5, 2),
        ("Batch Matrix Multiply (NC, F32) GEMM #1", 0.5, 2),
        ("native_call_native_layer_norm.out", 2.0, 2),
    ]
    ops = {op.name: op for op in ks.from_etdump_events(events)}
    assert set(ops) == {
        "Fully Connected (NC, QDU8, F32, QC8W) GEMM",
        "Batch Matrix Multiply (NC, F32) GEMM",
        "native_call_native_layer_norm.out",
    }
    assert ops["Fully Connected (NC, QDU8, F32, QC8W) GEMM"].self_us == pytest.approx(1500.0)
    assert ops["Fully Connected (NC, QDU8, F32, QC8W) GEMM"].calls == 4
    assert ks.kernel_share(ops.values()).share == pytest.approx(1.5 / 2.0)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()


def test_real_profile_of_dynamic_int8_linears_is_int8():
    from vitquant.quant.dynamic import quantize_dynamic

    torch.set_num_threads(1)
    qmodel = quantize_dynamic(_mlp()).module
    x = torch.randn(64, 256)
    with torch.no_grad():
        qmodel(x)
    ops = ks.profile_torch(qmodel, x, iters=3)
    share = ks.kernel_share(ops)
    assert any(op.name == "quantized::linear_dynamic" and op.calls == 6 for op in ops)
    assert share.share > 0.9
    assert share.label == "int8"


def test_real_profile_of_a_float_model_has_no_int8():
    torch.set_num_threads(1)
    model = _mlp()
    x = torch.randn(64, 256)
    with torch.no_grad():
        model(x)
    share = ks.kernel_share(ks.profile_torch(model, x, iters=3))
    assert share.int8_us == 0.0
    assert share.float_us > 0.0
    assert share.share == 0.0
    assert share.label == "float"


def test_real_openvino_profiles_of_an_int8_and_a_float_model(tmp_path):
    """NNCF's int8 MLP runs its matrix work in int8 kernels; the float IR in float ones."""
    import nncf

    from vitquant.quant.openvino_backend import convert, save_ir

    torch.set_num_threads(1)
    x = torch.randn(64, 256)
    float_ir = convert(_mlp(), x)
    int8_ir = nncf.quantize(float_ir, nncf.Dataset([x.numpy()]), subset_size=1)
    shares = {}
    for name, model in (("fp32", float_ir), ("int8", int8_ir)):
        path = save_ir(model, tmp_path / f"{name}.xml")
        shares[name] = ks.kernel_share(ks.profile_openvino(path, x, threads=1, iters=2))
    assert shares["int8"].share > 0.9 and shares["int8"].label == "int8"
    assert shares["fp32"].int8_us == 0 and shares["fp32"].float_us > 0
