"""Int8 attention on the x86 path (``StaticPTQ(int8_attention=True)``): the attention layout is
timm's math, the recipe is refused where it has no meaning, and on an AMX CPU inductor fuses
every attention block into torchao's int8 kernel without changing the predictions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import Attention

from vitquant.analysis.weights import sqnr_db
from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.quant import x86_attention
from vitquant.quant.configs import StaticPTQ
from vitquant.quant.lowered import LoweredModel
from vitquant.quant.pt2e import quantize_static
from vitquant.registry import load_model


def test_the_int8_attention_layout_computes_timms_attention():
    torch.manual_seed(0)
    attn = Attention(dim=48, num_heads=4, qkv_bias=True).eval()
    attn.fused_attn = False
    x = torch.randn(3, 7, 48)
    with torch.no_grad():
        expected = attn(x)
        model = torch.nn.Sequential(attn)
        assert x86_attention.use_int8_attention_layout(model, tokens=7) == 1
        got = attn(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(attn.qsdpa_zero_mask) == 0


def test_token_count_of_a_timm_vit_and_of_a_cnn():
    assert x86_attention.token_count(load_model("digits_vit", random_weights=True).model) == 5
    assert x86_attention.token_count(torch.nn.Conv2d(3, 8, 3)) is None


def test_int8_attention_is_an_x86_option():
    with pytest.raises(VitquantError, match="int8_attention is an x86 option"):
        StaticPTQ(backend="xnnpack", int8_attention=True)


@pytest.mark.skipif(not x86_attention.available(), reason="the fused kernel needs AMX")
def test_every_attention_block_fuses_and_predictions_hold(digits_models):
    from torch._dynamo.utils import counters

    digits = load_data("digits")
    vit = load_model("digits_vit")
    cfg = StaticPTQ(int8_attention=True, calib=128)
    qm = quantize_static(vit.model, digits, vit.spec, cfg)
    assert any("3 attention block(s)" in n for n in qm.notes)
    assert not hasattr(vit.model.blocks[0].attn, "qsdpa_zero_mask")  # the user's model is intact
    x, _ = next(digits.batches("test", vit.spec, batch_size=32))
    counters.clear()
    lowered = LoweredModel(qm, float_ops="bf16")(x)  # the fastest path; compiles fastest too
    assert counters["inductor"]["qsdpa_fuse_attention"] == 3
    with torch.no_grad():
        eager, ref = qm.module(x), vit.model(x)
    agree = np.mean(lowered.argmax(1).numpy() == eager.argmax(1).numpy())
    assert agree >= 0.95
    assert sqnr_db(ref.numpy(), lowered.numpy()) > 15.0


def test_the_pipeline_hands_int8_attention_to_its_static_variants(tmp_path):
    from pathlib import Path

    from vitquant.pipeline import PipelineConfig
    from vitquant.pipeline.context import Context

    cfg = PipelineConfig(int8_attention=True)
    ctx = Context(torch.nn.Linear(2, 2), None, None, cfg, Path("."), None, None)
    assert ctx.static_cfg.int8_attention is True
    assert Context(
        torch.nn.Linear(2, 2), None, None, PipelineConfig(), Path("."), None, None
    ).static_cfg == (StaticPTQ(observer=None))
    args = ["pipeline", "digits_vit", "--quantizer", "xnnpack", "--x86-int8-attention"]
    proc = subprocess.run(
        [sys.executable, "-m", "vitquant", *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--x86-int8-attention needs the x86 quantizer" in proc.stderr
    assert not (tmp_path / "run").exists()
