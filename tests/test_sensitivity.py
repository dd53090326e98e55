"""Per-layer W8A8 sensitivity against an independently built fake-quantized copy of the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitquant.analysis.sensitivity import per_layer_sensitivity
from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.registry import load_model

N_VAL, N_CALIB = 90, 64


@pytest.fixture(scope="module")
def setup(digits_models):
    loaded = load_model("digits_cnn")
    bundle = load_data("digits", val=N_VAL, calib=N_CALIB)
    return loaded.model, loaded.spec, bundle


class ReferenceW8A8(nn.Module):
    """A layer with NumPy-quantized weights and uint8 input quantization, built by hand.

    Arithmetic follows torch's fake-quant kernels (float32, ``round(x * (1 / scale))``), so that
    values exactly at a rounding tie (a channel's -max|w| lands on -127.5) round the same way.
    """

    def __init__(self, layer: nn.Module, x_min: float, x_max: float):
        super().__init__()
        self.layer = copy.deepcopy(layer)
        w = layer.weight.detach().numpy()
        amax = np.abs(w.reshape(w.shape[0], -1)).max(1).reshape(-1, *[1] * (w.ndim - 1))
        scale = (amax / np.float32(127.5)).astype(np.float32)  # qint8 symmetric, -128..127
        inv = (np.float32(1) / scale).astype(np.float32)
        q = np.clip(np.round(w * inv), -128, 127) * scale
        self.layer.weight.data = torch.from_numpy(q.astype(np.float32))
        lo, hi = min(x_min, 0.0), max(x_max, 0.0)
        self.scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
        self.zp = int(np.clip(0 - np.round(lo / self.scale), 0, 255))

    def forward(self, x):
        inv = float(np.float32(1) / self.scale)
        q = torch.clamp(torch.round(x * inv) + self.zp, 0, 255)
        return self.layer((q - self.zp) * float(self.scale))


def reference(model, spec, bundle, names):
    """Logits of a copy whose ``names`` layers are swapped for ``ReferenceW8A8``."""
    ranges = {}
    handles = []
    for name, m in model.named_modules():
        if name in names:

            def hook(_m, args, _n=name):
                x = args[0]
                lo, hi = ranges.get(_n, (np.inf, -np.inf))
                ranges[_n] = (min(lo, x.min().item()), max(hi, x.max().item()))

            handles.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        for x, _ in bundle.batches("calib", spec):
            model(x)
    for h in handles:
        h.remove()
    ref = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = ref.get_submodule(parent_name) if parent_name else ref
        setattr(parent, child, ReferenceW8A8(getattr(parent, child), *ranges[name]))
    with torch.no_grad():
        return torch.cat([ref(x) for x, _ in bundle.batches("val", spec)])


def test_against_hand_built_reference(setup):
    model, spec, bundle = setup
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = per_layer_sensitivity(model, bundle, spec, progress=False)
    everything = ["conv1", "conv2", "conv3", "fc"]
    assert sorted(r.name for r in rows) == sorted(everything)

    labels = bundle.role("val").labels
    with torch.no_grad():
        float_logits = torch.cat([model(x) for x, _ in bundle.batches("val", spec)])
    p_float = F.log_softmax(float_logits, 1)
    for r in rows:
        assert r.float_acc == pytest.approx(accuracy(model, bundle, "val", spec))
        for which, names in (
            ("only", [r.name]),
            ("all_but", [n for n in everything if n != r.name]),
        ):
            logits = reference(model, spec, bundle, names)
            acc = (logits.argmax(1) == labels).float().mean().item()
            kl = (p_float.exp() * (p_float - F.log_softmax(logits, 1))).sum(1).mean().item()
            agree = (logits.argmax(1) == float_logits.argmax(1)).float().mean().item()
            assert getattr(r, f"{which}_acc") == pytest.approx(acc, abs=1e-9), r.name
            assert getattr(r, f"{which}_kl") == pytest.approx(kl, rel=1e-3, abs=1e-9), r.name
            assert getattr(r, f"{which}_agreement") == pytest.approx(agree, abs=1e-9)
    # Ranked most sensitive first; the model is left as it was.
    assert [r.only_kl for r in rows] == sorted((r.only_kl for r in rows), reverse=True)
    assert [r.rank for r in rows] == [1, 2, 3, 4]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_refuses_test_split_and_unknown_layers(setup):
    model, spec, bundle = setup
    with pytest.raises(VitquantError, match="val"):
        per_layer_sensitivity(model, bundle, spec, role="test", progress=False)
    with pytest.raises(VitquantError, match="conv9"):
        per_layer_sensitivity(model, bundle, spec, layers=["conv9"], progress=False)
