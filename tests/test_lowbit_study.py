"""The low-bit study and its command: rows against independent evaluations of the same graphs,
the recipe rule re-derived from the rows' val figures, methods refused where they cannot apply."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vitquant.errors import VitquantError
from vitquant.measure import Measurer
from vitquant.quant.lowbit import LowBitPTQ
from vitquant.quant.lowbit.methods import apply_methods, parse_methods, why_not
from vitquant.quant.lowbit.study import LowBitJob, run_lowbit


@pytest.fixture(scope="module")
def digits(digits_models):
    from vitquant.cli.common import model_and_data

    loaded, bundle = model_and_data(
        "digits_vit",
        data="digits",
        checkpoint=None,
        pretrained=False,
        random_weights=False,
        num_classes=None,
        calib=64,
        val=120,
        limit=120,
        seed=0,
    )
    return loaded, bundle


def _accuracy(module, bundle, spec, role: str) -> float:
    right = total = 0
    with torch.no_grad():
        for x, y in bundle.batches(role, spec, batch_size=128):
            right += int((module(x).argmax(-1) == y).sum())
            total += len(y)
    return right / total


def test_study_rows_and_recipe_rule(digits, tmp_path):
    loaded, bundle = digits
    setting = LowBitPTQ(wbits=2, abits=4, quantize_attention=True, calib=64)
    measurer = Measurer(bundle, loaded.spec, roles=("val", "test"), latency_batches=(), log=None)
    from vitquant.measure import Candidate

    measurer.measure(Candidate("fp32", "pytorch", loaded.model.eval()))
    job = LowBitJob(setting=setting, all_together=True)
    res = run_lowbit(
        loaded.model, bundle, loaded.spec, job, measurer=measurer, artifacts=tmp_path, log=print
    )
    rows = {r.variant: r for r in res.rows}
    singles = {v.split("+", 1)[1]: r for v, r in rows.items() if "+" in v}
    assert set(singles) == set(parse_methods("all"))  # a ViT with attention: all six apply
    assert "W2A4-attn-all" in rows and all(r.simulated for r in res.rows)
    # min-max row == an independent evaluation of the same quantization
    base = rows["W2A4-attn-minmax"]
    qm = apply_methods(loaded.model, bundle, loaded.spec, setting, ()).qm
    assert base.val_accuracy == pytest.approx(_accuracy(qm.module, bundle, loaded.spec, "val"))
    assert base.accuracy == pytest.approx(_accuracy(qm.module, bundle, loaded.spec, "test"))
    # the recipe rule, re-derived from the rows' val figures
    helped = [n for n, r in singles.items() if r.val_accuracy > base.val_accuracy]
    if not helped:
        assert res.recipe == () and res.recipe_variant == base.variant
    elif len(helped) == 1:
        assert res.recipe == tuple(helped)
    else:
        best = max(singles[n].val_accuracy for n in helped)
        # every method helped: the all-methods row is the combination (not measured twice)
        together = rows.get("W2A4-attn-vit", rows["W2A4-attn-all"]).val_accuracy
        assert set(res.recipe) == set(helped) if together >= best else len(res.recipe) == 1
    # every row saved its graph and the seconds each method took
    for r in res.rows:
        assert r.artifact and (tmp_path / f"{r.variant}.pt2").is_file()
        assert "quantize" in r.extra["method_seconds"]
    assert rows["W2A4-attn+gptq"].extra["method_seconds"]["gptq"] > 0


def test_methods_that_cannot_apply(digits):
    loaded, _ = digits
    from vitquant.models.digits_cnn import DigitsCNN

    cnn = DigitsCNN()
    cfg = LowBitPTQ(wbits=4, abits=4)
    assert "DeiT-style" in why_not("rotate", cfg, cnn)
    assert "GELU" in why_not("twin-gelu", cfg, cnn)
    assert why_not("gptq", cfg, cnn) is None
    assert "--quantize-attention" in why_not("log2-softmax", cfg, loaded.model)
    with pytest.raises(VitquantError, match="unknown ViT-aware method"):
        parse_methods("rotate,hadamardx")


def test_quantize_command_lowbit(digits_models, tmp_path):
    out = tmp_path / "q"
    args = [
        sys.executable, "-m", "vitquant", "quantize", "digits_vit", "--data", "digits",
        "--wbits", "2", "--abits", "4", "--quantize-attention", "--vit-methods", "gptq",
        "--calib", "64", "--val", "120", "--limit", "120", "--impact-images", "64",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "quantize.json").read_text())
    variants = [r["variant"] for r in doc["results"]]
    assert variants == ["fp32", "W2A4-attn-minmax", "W2A4-attn-vit"]
    assert doc["lowbit"]["recipe"] == ["gptq"]
    table = doc["point_errors"]["minmax"]
    kinds = {p["kind"] for p in table["points"]}
    assert {"norm", "act", "softmax", "qkv"} <= kinds
    assert all(p["outlier_pct"] is not None for p in table["points"])
    assert table["correlation"]["outlier_pct_vs_impact"]["n"] == len(table["points"])
    from vitquant.results import validate_rows

    validate_rows(doc["results"])
    assert (out / "point_errors_minmax.md").read_text().count("\n| ") == len(table["points"]) + 1
    # a method that cannot apply is refused before anything is measured
    bad = [*args[:-2], "--vit-methods", "log2-softmax", "--out", str(tmp_path / "bad")]
    bad.remove("--quantize-attention")
    proc = subprocess.run(bad, capture_output=True, text=True)
    assert proc.returncode != 0 and "--quantize-attention" in proc.stderr


def test_api_quantizes_any_module_at_low_bits(digits):
    import vitquant as vq

    loaded, bundle = digits
    calib = list(bundle.batches("calib", loaded.spec, batch_size=32))
    test = list(bundle.batches("test", loaded.spec, batch_size=64))
    cfg = vq.LowBitPTQ(wbits=2, abits=4, quantize_attention=True, calib=64)
    q = vq.quantize(loaded.model, cfg, methods=["gptq"], calibration=calib, test=test)
    assert q.variant == "W2A4-attn-gptq" and q.backend == "pt2e-lowbit" and q.simulated
    fp32, row = q.rows
    assert row.latency_ms_per_image is None  # emulated: not timed
    # the row's accuracy equals an independent evaluation of the returned model on test
    right = sum(int((q(x).argmax(-1) == y).sum()) for x, y in test)
    assert row.accuracy == pytest.approx(right / sum(len(y) for _, y in test))
    with pytest.raises(VitquantError, match="LowBitPTQ"):
        vq.quantize(loaded.model, vq.StaticPTQ(), methods=["gptq"], calibration=calib)


def test_a_bits_rule_matching_nothing_is_refused_first(digits, tmp_path):
    loaded, bundle = digits
    from vitquant.quant.lowbit.flow import lowbit_run

    job = LowBitJob(setting=LowBitPTQ(wbits=4, abits=4, rules=("blocks.9.*=8/8",)))
    with pytest.raises(VitquantError, match="blocks.9"):
        lowbit_run(loaded.model, bundle, loaded.spec, job, artifacts=tmp_path, log=None)
    assert not any(tmp_path.iterdir())  # nothing measured or written
