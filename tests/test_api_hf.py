"""The Python API on a Hugging Face ``transformers`` ViT (random weights, built from a
``ViTConfig``, no hub): its ``ImageClassifierOutput`` is unwrapped to logits on every path -
analysis hooks, pt2e export, ONNX and ExecuTorch - under the model's own module names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vitquant as vq
from vitquant.quant.pt2e import weight_dtypes

IGNORE = ["classifier", "*.mlp.fc2"]


@pytest.fixture(scope="module")
def hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
    )
    return ViTForImageClassification(config).eval()


@pytest.fixture(scope="module")
def loaders():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    return {
        "calib": DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32),
        "test": DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32),
    }


@pytest.fixture(scope="module")
def static(hf_vit, loaders):
    return vq.quantize(
        hf_vit,
        vq.StaticPTQ(backend="xnnpack", observer="minmax"),
        calibration=loaders["calib"],
        test=loaders["test"],
        ignore=IGNORE,
        latency_batches=(),
    )


def test_the_model_really_returns_an_output_object(hf_vit):
    out = hf_vit(torch.zeros(2, 3, 32, 32))
    assert not isinstance(out, torch.Tensor) and out.logits.shape == (2, 10)


def test_analyze_matches_numpy_under_the_models_names(hf_vit, loaders):
    result = vq.analyze(hf_vit, calibration=loaders["calib"], sample_size=100)
    names = {n for n, _ in hf_vit.named_modules()}
    assert {p.module for p in result.points} <= names  # no wrapper prefix
    assert result.payload["family"] == "vit"
    points = {p.point: p for p in result.points}  # LayerNorm outputs are observed (a ViT)
    assert points["vit.layers.0.layernorm_before"].kind == "norm"
    assert points["vit.layers.0.layernorm_before"].module == "vit.layers.0.attention.q_proj"
    assert points["classifier"].kind == "head"
    point = "vit.layers.0.mlp.fc1"
    outputs = []
    fc1 = hf_vit.get_submodule(point)
    hook = fc1.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    with torch.no_grad():
        for x, _ in loaders["calib"]:
            hf_vit(x)
    hook.remove()
    values = torch.cat(outputs).double().numpy().reshape(-1)  # (64 images x 65 tokens x 128)
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    outside = (values < q1 - 1.5 * (q3 - q1)) | (values > q3 + 1.5 * (q3 - q1))
    stats = result.point(point)
    assert stats.count == values.size == 64 * 65 * 128
    assert (stats.q1, stats.median, stats.q3) == pytest.approx((q1, med, q3), rel=1e-12)
    assert stats.outlier_pct == pytest.approx(100 * outside.mean(), abs=1e-9)
    json.dumps(result.to_dict())


def test_static_ptq_keeps_the_ignore_list_float(static, hf_vit):
    ignored = ["vit.layers.0.mlp.fc2", "vit.layers.1.mlp.fc2", "classifier"]
    assert static.ignored == ignored and static.float_layers == ignored
    linear = [n for n, m in hf_vit.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert static.int8_layers == [n for n in linear if n not in ignored]
    dtypes = weight_dtypes(static.module)
    assert all(dtypes[n] == torch.float32 for n in ignored)
    assert all(dtypes[n] == torch.int8 for n in static.int8_layers)
    fp32, row = static.rows
    assert row.backend == "pt2e-xnnpack" and row.n == 64 and row.agreement_fp32 >= 0.9
    assert static(torch.zeros(2, 3, 32, 32)).shape == (2, 10)  # a tensor, not an output object


@pytest.mark.parametrize("suffix", [".onnx", ".pte"])
def test_exports_reload_and_agree_with_the_pt2e_model(static, loaders, tmp_path, suffix):
    runner = vq.load_artifact(static.export(tmp_path / f"vit{suffix}"))
    ev = vq.evaluate(runner, reference=static, test=loaders["test"], latency_batches=())
    assert ev.row.agreement_pt2e >= 0.99
    x = torch.cat([b[0] for b in loaders["test"]])
    agree = (runner(x).argmax(1) == static(x).argmax(1)).float().mean().item()
    assert agree == ev.row.agreement_pt2e
    assert ev.to_dict()["results"][1]["backend"] in ("onnxruntime", "executorch-xnnpack")


def test_dynamic_int8_and_evaluation(hf_vit, loaders):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    q = vq.quantize(hf_vit, vq.DynamicPTQ(), ignore=["classifier"], test=loaders["test"])
    assert type(q.module.get_submodule("classifier")) is nn.Linear
    assert isinstance(q.module.get_submodule("vit.layers.1.attention.q_proj"), DynamicLinear)
    assert "classifier" not in q.int8_layers and len(q.int8_layers) == 12
    fp32, row = q.rows
    assert row.agreement_fp32 >= 0.9 and row.latency_ms_per_image > 0
    ev = vq.evaluate(hf_vit, test=loaders["test"], latency_batches=())
    assert ev.accuracy == fp32.accuracy
