"""Static PTQ (torchao pt2e), dynamic int8 and accuracy-aware selection, checked against the float
model and exact NumPy re-computations of the int8 weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vitquant.data import load_data
from vitquant.evaluate import accuracy, predict
from vitquant.layers import quantizable_names
from vitquant.quant.artifacts import load_pt2e, pt2e_weight_dtypes, save_pt2e
from vitquant.quant.auto import select_ignore, sweep_top_k
from vitquant.quant.configs import DynamicPTQ, StaticPTQ
from vitquant.quant.dynamic import quantize_dynamic
from vitquant.quant.observers import PercentileObserver
from vitquant.quant.pt2e import WEIGHT_OPS, quantize_static, weight_dtypes
from vitquant.registry import load_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def cnn(digits_models):
    return load_model("digits_cnn")


@pytest.fixture(scope="module")
def vit(digits_models):
    return load_model("digits_vit")


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    return 10 * torch.log10(ref.pow(2).sum() / (ref - test).pow(2).sum()).item()


def int8_weight_and_scale(gm, module: str) -> tuple[np.ndarray, np.ndarray]:
    """The int8 constant and per-channel scale feeding ``module``'s op in a converted graph."""
    for node in gm.graph.nodes:
        if (
            node.target in WEIGHT_OPS
            and list(node.meta["nn_module_stack"].values())[-1][0] == module
        ):
            dq = node.args[1]
            w, scale = (getattr(gm, a.target) for a in dq.args[:2])
            return w.numpy(), scale.numpy()
    raise AssertionError(f"{module} not in graph")


def test_static_per_channel_cnn_is_int8_everywhere_and_close_to_float(cnn, digits, tmp_path):
    qm = quantize_static(cnn.model, digits, cnn.spec, StaticPTQ(per_channel=True))
    names = quantizable_names(cnn.model)
    assert qm.int8_layers == names and qm.float_layers == []
    # the saved artifact really holds int8 weights, and reloads to the same function
    path = save_pt2e(qm.module, qm.example, tmp_path / "static.pt2")
    assert pt2e_weight_dtypes(path) == dict.fromkeys(names, torch.int8)
    x, _ = next(digits.batches("test", cnn.spec, batch_size=64))
    assert torch.equal(load_pt2e(path)(x), qm.module(x))
    # accuracy and logits against the float model on the same test images
    ref, labels = predict(cnn.model, digits, "test", cnn.spec)
    out, _ = predict(qm.module, digits, "test", cnn.spec)
    fp32 = (ref.argmax(1) == labels).float().mean().item()
    int8 = (out.argmax(1) == labels).float().mean().item()
    assert abs(fp32 - int8) * 100 <= 1.5
    assert sqnr_db(ref, out) > 15


def test_per_channel_int8_weights_match_a_numpy_requantization(vit, digits):
    qm = quantize_static(vit.model, digits, vit.spec, StaticPTQ(per_channel=True))
    for name in ("blocks.0.attn.qkv", "head", "patch_embed.proj"):
        w_int8, scale = int8_weight_and_scale(qm.module, name)
        w = vit.model.get_submodule(name).weight.detach().numpy().astype(np.float32)
        absmax = np.abs(w.reshape(len(w), -1)).max(1)
        np.testing.assert_allclose(scale, np.maximum(absmax / 127.5, 2**-12), rtol=1e-6)
        inv = (np.float32(1.0) / scale.astype(np.float32)).reshape(-1, *[1] * (w.ndim - 1))
        expected = np.clip(np.round(w * inv), -128, 127)
        diff = np.abs(w_int8.astype(np.int32) - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_ignore_list_keeps_exactly_those_layers_float(vit, digits):
    qm = quantize_static(vit.model, digits, vit.spec, ignore=["head", "blocks.1.*"])
    names = quantizable_names(vit.model)
    floats = [
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
        "blocks.1.mlp.fc1",
        "blocks.1.mlp.fc2",
        "head",
    ]
    assert qm.ignored == floats
    assert qm.float_layers == floats
    assert qm.int8_layers == [n for n in names if n not in floats]
    dtypes = weight_dtypes(qm.module)
    assert all(dtypes[n] == torch.float32 for n in floats)
    assert all(dtypes[n] == torch.int8 for n in qm.int8_layers)


def test_per_tensor_weights_and_symmetric_activations_shape_the_graph(cnn, digits):
    cfg = StaticPTQ(per_channel=False, symmetric_activations=True, observer="histogram")
    qm = quantize_static(cnn.model, digits, cnn.spec, cfg)
    targets = [str(n.target) for n in qm.module.graph.nodes if n.op == "call_function"]
    assert not any("per_channel" in t for t in targets)
    acts = [
        n
        for n in qm.module.graph.nodes
        if "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)
    ]
    assert acts and all(n.args[2] == 0 and n.args[-1] == torch.int8 for n in acts)
    assert qm.int8_layers == quantizable_names(cnn.model)


def test_percentile_observer_averages_numpy_percentiles():
    obs = PercentileObserver(percentile=99.0)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 33, generator=gen) * (i + 1) for i in range(3)]
    for b in batches:
        obs(b)
    lo = np.mean([np.percentile(b.numpy(), 1.0) for b in batches])
    hi = np.mean([np.percentile(b.numpy(), 99.0) for b in batches])
    assert obs.min_val.item() == pytest.approx(lo, rel=1e-5)
    assert obs.max_val.item() == pytest.approx(hi, rel=1e-5)


def test_dynamic_int8_quantizes_linear_layers_only(vit, digits):
    dq = quantize_dynamic(vit.model, DynamicPTQ(), ignore=["head"])
    linears = [n for n, m in vit.model.named_modules() if isinstance(m, nn.Linear)]
    assert dq.int8_layers == [n for n in linears if n != "head"]
    assert dq.float_layers == ["patch_embed.proj", "head"]
    ref, labels = predict(vit.model, digits, "test", vit.spec)
    out, _ = predict(dq.module, digits, "test", vit.spec)
    assert sqnr_db(ref, out) > 15
    drop = (ref.argmax(1) == labels).float().mean() - (out.argmax(1) == labels).float().mean()
    assert abs(drop.item()) * 100 <= 1.5


def test_select_ignore_walks_the_ranking_until_the_budget_holds(vit, digits):
    ranking = ["blocks.2.mlp.fc2", "head"]
    result = select_ignore(vit.model, digits, vit.spec, max_drop=0.0, ranking=ranking)
    assert result.fp32_val_acc == pytest.approx(accuracy(vit.model, digits, "val", vit.spec))
    for k, step in enumerate(result.steps):
        assert step["ignored"] == ranking[:k]
        expected = (result.fp32_val_acc - step["val_acc"]) * 100
        assert step["drop_pts"] == pytest.approx(expected, abs=1e-4)  # stored rounded
    # every step before the last missed the budget; the last met it or used the whole ranking
    assert all(s["drop_pts"] > 0.0 for s in result.steps[:-1])
    assert result.met == (result.steps[-1]["drop_pts"] <= 0.0)
    assert result.met or len(result.steps) == len(ranking) + 1
    assert result.model.ignored == result.ignored
    # a generous budget stops at "everything int8"
    loose = select_ignore(vit.model, digits, vit.spec, max_drop=100.0, ranking=ranking)
    assert len(loose.steps) == 1 and loose.ignored == [] and loose.met


def test_top_k_sweep_clips_and_deduplicates_k(vit, digits):
    ranking = ["head", "blocks.0.mlp.fc1"]
    rows = sweep_top_k(
        vit.model, digits, vit.spec, ranking=ranking, ks=(0, 1, 1, 50), roles=("val",)
    )
    assert [r["k"] for r in rows] == [0, 1, 2]
    assert [r["ignored"] for r in rows] == [[], ["head"], ranking]
    direct = quantize_static(vit.model, digits, vit.spec, ignore=["head"])
    assert rows[1]["val_acc"] == pytest.approx(accuracy(direct.module, digits, "val", vit.spec))


@pytest.mark.slow
def test_cifar_resnet20_static_per_channel_saves_int8_weights(assets, tmp_path):
    loaded = load_model("cifar_resnet20")
    bundle = load_data("cifar10", calib=128, limit=200)
    qm = quantize_static(loaded.model, bundle, loaded.spec, StaticPTQ(per_channel=True))
    names = quantizable_names(loaded.model)
    assert len(names) == 20 and qm.int8_layers == names
    path = save_pt2e(qm.module, qm.example, tmp_path / "resnet20.pt2")
    assert pt2e_weight_dtypes(path) == dict.fromkeys(names, torch.int8)
