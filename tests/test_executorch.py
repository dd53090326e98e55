"""The XNNPACK quantizer (ExecuTorch) and `.pte` programs: config, ignore list, lowering report,
and the reloaded program's outputs against the converted PyTorch model and the float model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from test_quant_pt2e import int8_weight_and_scale
from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.evaluate import predict
from vitquant.layers import quantizable_names
from vitquant.quant.configs import StaticPTQ
from vitquant.quant.executorch_backend import PteModel, export_pte
from vitquant.quant.pt2e import quantize_static, weight_dtypes
from vitquant.registry import load_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", calib=128)


@pytest.fixture(scope="module")
def vit(digits_models):
    return load_model("digits_vit")


@pytest.fixture(scope="module")
def cnn(digits_models):
    return load_model("digits_cnn")


def activation_dtypes(gm: torch.fx.GraphModule) -> set[torch.dtype]:
    """dtypes of the activation ``quantize_per_tensor`` nodes of a converted graph."""
    return {
        n.args[-1]
        for n in gm.graph.nodes
        if n.op == "call_function"
        and "quantize_per_tensor" in str(n.target)
        and "dequantize" not in str(n.target)
    }


def test_xnnpack_config_is_executorchs_symmetric_recipe(vit, digits):
    cfg = StaticPTQ(backend="xnnpack", calib=128)
    assert cfg.observer == "histogram"  # ExecuTorch's default activation observer
    qm = quantize_static(vit.model, digits, vit.spec, cfg)
    assert qm.int8_layers == quantizable_names(vit.model)
    # activations int8 (x86: uint8); weights in [-127, 127] with scale = absmax / 127, checked
    # against a NumPy requantization of the float weights
    assert activation_dtypes(qm.module) == {torch.int8}
    for name in ("blocks.0.attn.qkv", "head", "patch_embed.proj"):
        w_int8, scale = int8_weight_and_scale(qm.module, name)
        w = vit.model.get_submodule(name).weight.detach().numpy().astype(np.float32)
        absmax = np.abs(w.reshape(len(w), -1)).max(1)
        np.testing.assert_allclose(scale, np.maximum(absmax / 127.0, 2**-12), rtol=1e-6)
        assert w_int8.min() >= -127 and w_int8.max() <= 127
        inv = (np.float32(1.0) / scale.astype(np.float32)).reshape(-1, *[1] * (w.ndim - 1))
        diff = np.abs(w_int8.astype(np.int32) - np.clip(np.round(w * inv), -127, 127))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    x86 = quantize_static(vit.model, digits, vit.spec, StaticPTQ(backend="x86", calib=128))
    assert activation_dtypes(x86.module) == {torch.uint8}


def test_xnnpack_ignore_list_keeps_exactly_those_layers_float(vit, digits):
    cfg = StaticPTQ(backend="xnnpack", calib=128)
    qm = quantize_static(vit.model, digits, vit.spec, cfg, ignore=["head", "blocks.1.*"])
    floats = [
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
        "blocks.1.mlp.fc1",
        "blocks.1.mlp.fc2",
        "head",
    ]
    assert qm.ignored == floats and qm.float_layers == floats
    dtypes = weight_dtypes(qm.module)
    assert all(dtypes[n] == torch.float32 for n in floats)
    assert all(dtypes[n] == torch.int8 for n in qm.int8_layers)
    assert len(qm.int8_layers) == len(quantizable_names(vit.model)) - len(floats)


def test_xnnpack_other_observer_and_symmetric_activations(cnn, digits):
    cfg = StaticPTQ(backend="xnnpack", observer="minmax", symmetric_activations=True, calib=128)
    qm = quantize_static(cnn.model, digits, cnn.spec, cfg)
    acts = [
        n
        for n in qm.module.graph.nodes
        if "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)
    ]
    assert acts and all(n.args[2] == 0 and n.args[-1] == torch.int8 for n in acts)


def test_unknown_quantizer_is_refused():
    with pytest.raises(VitquantError, match="x86, xnnpack"):
        StaticPTQ(backend="arm")


@pytest.fixture(scope="module")
def lowered(tmp_path_factory, digits, digits_models):
    """name -> (loaded model, static XNNPACK QuantizedModel, its lowered .pte), made once each
    (lowering the ViT takes most of a minute)."""
    out = tmp_path_factory.mktemp("pte")

    def make(name: str):
        if name not in cache:
            loaded = load_model(name)
            qm = quantize_static(loaded.model, digits, loaded.spec, StaticPTQ(backend="xnnpack"))
            cache[name] = (loaded, qm, export_pte(qm.module, qm.example, out / f"{name}.pte"))
        return cache[name]

    cache: dict = {}
    return make


@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit"])
def test_pte_reloads_and_matches_the_converted_model(name, digits, lowered):
    loaded, qm, exported = lowered(name)
    assert exported.path.stat().st_size > 0 and not list(exported.path.parent.glob("*.tmp*"))
    program = PteModel(exported.path, threads=1)  # a fresh load from disk
    assert program.threads == 1 and program.max_batch == exported.max_batch >= 15
    # every batch size runs (bigger batches are split at the planned bound) and agrees
    x, _ = next(digits.batches("test", loaded.spec, batch_size=64))
    ref = qm.module(x)
    for b in (1, 7, 64):
        assert torch.allclose(program(x[:b]), ref[:b], atol=0.05 * ref.abs().max().item())
    # the whole test split: int8 kernels vs emulation, and vs the float model
    out, labels = predict(program, digits, "test", loaded.spec)
    emu, _ = predict(qm.module, digits, "test", loaded.spec)
    fp32, _ = predict(loaded.model, digits, "test", loaded.spec)
    assert (out.argmax(1) == emu.argmax(1)).float().mean() >= 0.99
    acc = (out.argmax(1) == labels).float().mean().item()
    emu_acc = (emu.argmax(1) == labels).float().mean().item()
    fp32_acc = (fp32.argmax(1) == labels).float().mean().item()
    assert abs(acc - emu_acc) * 100 <= 0.6 and fp32_acc - acc <= 0.02
    # int8 weights: the program is well under the float32 parameter bytes
    fp32_bytes = sum(p.numel() * 4 for p in loaded.model.parameters())
    assert exported.path.stat().st_size < 0.5 * fp32_bytes


def test_lowering_names_the_operators_left_to_portable_kernels(lowered):
    # the ViT's LayerNorms do not lower to XNNPACK here: one portable op per nn.LayerNorm, and
    # nothing else (attention was traced through its explicit softmax path, not fused SDPA)
    vit, qm, exported = lowered("digits_vit")
    n_blocks = sum(hasattr(m, "fused_attn") for m in vit.model.modules())
    assert any(f"{n_blocks} attention block(s)" in n for n in qm.notes)
    assert all(m.fused_attn for m in vit.model.modules() if hasattr(m, "fused_attn"))  # restored
    n_norms = sum(isinstance(m, nn.LayerNorm) for m in vit.model.modules())
    assert exported.portable_ops == {"native_layer_norm": n_norms}
    assert "native_layer_norm x" in exported.note() and exported.delegated > 0
    # the CNN lowers completely
    _, _, exported = lowered("digits_cnn")
    assert exported.portable_ops == {}
    assert "every compute operator lowered" in exported.note()


def test_a_file_that_is_not_a_program_is_refused(tmp_path):
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program")
    with pytest.raises(VitquantError, match="could not load"):
        PteModel(bad)
    with pytest.raises(VitquantError, match="not found"):
        PteModel(tmp_path / "missing.pte")


def test_executorch_installs_beside_the_pinned_torch():
    from importlib.metadata import version

    # executorch 1.5.1 must not move torch off the pin (pyproject.toml): the wheels here are
    # built for exactly this torch
    assert version("executorch") == "1.5.1"
    assert version("torch") == "2.14.1" and version("torchao") == "0.18.0"
