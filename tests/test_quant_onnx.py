"""ONNX Runtime deployment: the float export matches PyTorch, ignore lists map to the right nodes
(verified on the quantized graph), int8 files shrink by the weight bytes, and ORT int8 agrees with
the PyTorch int8 model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.evaluate import file_size_mb, predict
from vitquant.layers import quantizable_names
from vitquant.quant.onnx_backend import (
    OnnxFloat,
    OrtModel,
    _checked,
    export_onnx,
    inspect_layers,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from vitquant.quant.pt2e import quantize_static
from vitquant.registry import load_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def vit(digits_models):
    return load_model("digits_vit")


@pytest.fixture(scope="module")
def vit_onnx(vit, digits, tmp_path_factory) -> OnnxFloat:
    x, _ = next(digits.batches("calib", vit.spec, batch_size=4))
    return export_onnx(vit.model, x, tmp_path_factory.mktemp("onnx") / "fp32.onnx")


def test_float_export_matches_pytorch_and_maps_every_layer(vit, vit_onnx, digits):
    assert list(vit_onnx.module_nodes) == quantizable_names(vit.model)
    graph = onnx.load(str(vit_onnx.path)).graph
    ops = {n.name: n.op_type for n in graph.node}
    for module, nodes in vit_onnx.module_nodes.items():
        assert [ops[n] for n in nodes] in (["MatMul"], ["Gemm"], ["Conv"]), module
    assert not any(n.metadata_props for n in graph.node)  # debug info stripped
    ort = OrtModel(vit_onnx.path, threads=1)
    for batch in (1, 32):  # the batch dimension is dynamic
        x, _ = next(digits.batches("test", vit.spec, batch_size=batch))
        np.testing.assert_allclose(ort(x).numpy(), vit.model(x).detach().numpy(), atol=1e-4)


def test_static_qdq_keeps_ignored_layers_float_and_agrees_with_pt2e(
    vit, vit_onnx, digits, tmp_path
):
    ignore = ["head", "blocks.0.attn.qkv"]
    oq = quantize_onnx_static(vit_onnx, digits, vit.spec, tmp_path / "static.onnx", ignore=ignore)
    report = inspect_layers(oq.path, vit_onnx.module_nodes)
    names = quantizable_names(vit.model)
    assert oq.float_layers == [n for n in names if n in ignore]
    assert oq.int8_layers == [n for n in names if n not in ignore]
    for module in names:  # quantized layers read DequantizeLinear outputs; ignored ones do not
        assert (report[module]["dq_inputs"] > 0) == (module not in ignore), module
    # the file shrinks by ~3 bytes per quantized weight (fp32 -> int8)
    graph = onnx.load(str(oq.path)).graph
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    int8 = [i for i in int8 if not i.name.endswith("zero_point")]  # weights, not zero points
    quantized = sum(vit.model.get_submodule(m).weight.numel() for m in oq.int8_layers)
    assert sum(int(np.prod(i.dims)) for i in int8) == quantized
    saved = (file_size_mb(vit_onnx.path) - file_size_mb(oq.path)) * 2**20
    assert saved >= 0.9 * 3 * quantized
    # ORT int8 vs the PyTorch int8 model with the same ignore list, on the same images
    qm = quantize_static(vit.model, digits, vit.spec, ignore=ignore)
    ort_logits, labels = predict(OrtModel(oq.path, threads=1), digits, "test", vit.spec)
    pt_logits, _ = predict(qm.module, digits, "test", vit.spec)
    ort_acc = (ort_logits.argmax(1) == labels).float().mean().item()
    pt_acc = (pt_logits.argmax(1) == labels).float().mean().item()
    assert abs(ort_acc - pt_acc) * 100 <= 1.5
    assert (ort_logits.argmax(1) == pt_logits.argmax(1)).float().mean() >= 0.97


def test_dynamic_uses_integer_matmuls_except_for_ignored_layers(vit, vit_onnx, digits, tmp_path):
    linears = [n for n in quantizable_names(vit.model) if n != "patch_embed.proj"]
    oq = quantize_onnx_dynamic(
        vit_onnx, tmp_path / "dyn.onnx", ignore=["blocks.1.mlp.fc1"], modules=linears
    )
    report = inspect_layers(oq.path, vit_onnx.module_nodes)
    assert report["blocks.0.mlp.fc1"]["integer_ops"] == ["MatMulInteger"]
    assert report["blocks.1.mlp.fc1"]["integer_ops"] == []
    assert report["patch_embed.proj"]["integer_ops"] == []  # not in ``modules``
    assert "blocks.1.mlp.fc1" in oq.float_layers and "patch_embed.proj" in oq.float_layers
    ref, labels = predict(vit.model, digits, "test", vit.spec)
    out, _ = predict(OrtModel(oq.path, threads=1), digits, "test", vit.spec)
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.97


def test_a_wrong_module_to_node_mapping_is_caught(vit_onnx, digits, vit, tmp_path):
    oq = quantize_onnx_static(vit_onnx, digits, vit.spec, tmp_path / "all.onnx")
    # pretend "head" was ignored although its node was quantized: the graph check must refuse
    with pytest.raises(VitquantError, match="mapping is wrong"):
        _checked(vit_onnx, oq.path, "static", ["head"], [])


def test_cnn_batchnorm_is_folded_and_names_survive(digits_models, digits, tmp_path):
    cnn = load_model("digits_cnn")
    x, _ = next(digits.batches("calib", cnn.spec, batch_size=4))
    fp32 = export_onnx(cnn.model, x, tmp_path / "cnn.onnx")
    ops = [n.op_type for n in onnx.load(str(fp32.path)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3
    oq = quantize_onnx_static(fp32, digits, cnn.spec, tmp_path / "cnn_q.onnx", ignore=["conv1"])
    assert oq.float_layers == ["conv1"]
    ort = OrtModel(fp32.path, threads=1)
    xb, _ = next(digits.batches("test", cnn.spec, batch_size=16))
    torch.testing.assert_close(ort(xb), cnn.model(xb).detach(), atol=1e-4, rtol=1e-4)
