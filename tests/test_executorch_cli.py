"""`--quantizer xnnpack --export pte` on quantize, bench, qat, pipeline: rows, files, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from test_quant_cli import run  # `python -m vitquant ...` in a subprocess
from vitquant.data import load_data
from vitquant.evaluate import accuracy
from vitquant.quant.executorch_backend import PteModel
from vitquant.registry import load_model

PTE = "executorch-xnnpack"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, digits_models):
    out = tmp_path_factory.mktemp("xnn") / "run"
    proc = run(
        "quantize",
        "digits_cnn",
        "--method",
        "static",
        "--quantizer",
        "xnnpack",
        "--export",
        "pte",
        "--ignore",
        "fc",
        "--no-onnx",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "quantize.json").read_text()), proc.stdout


def test_quantize_adds_a_pte_row_per_static_variant(quantized):
    out, doc, stdout = quantized
    rows = {(r["variant"], r["backend"]): r for r in doc["results"]}
    assert set(rows) == {
        ("fp32", "pytorch"),
        ("static", "pt2e-xnnpack"),
        ("static", PTE),
        ("static-ignore", "pt2e-xnnpack"),
        ("static-ignore", PTE),
    }
    assert doc["job"]["static"]["backend"] == "xnnpack" and doc["job"]["export"] == "pte"
    cnn = load_model("digits_cnn")
    digits = load_data("digits")
    for variant in ("static", "static-ignore"):
        pte, twin = rows[(variant, PTE)], rows[(variant, "pt2e-xnnpack")]
        # the row's accuracy is what the saved program scores when loaded again
        program = PteModel(pte["artifact"], threads=1)
        assert pte["accuracy"] == pytest.approx(accuracy(program, digits, "test", cnn.spec))
        assert abs(pte["accuracy"] - twin["accuracy"]) * 100 <= 0.6
        assert pte["agreement_pt2e"] >= 0.99 and pte["runtime"] == "executorch"
        assert pte["extra"]["twin"] == [variant, "pt2e-xnnpack"]
        assert pte["latency_ms_per_image"] > 0 and pte["latency_threads"] == 1
        assert not pte["simulated"] and twin["simulated"]  # emulation vs XNNPACK kernels
        assert pte["int8_layers"] == twin["int8_layers"]
        assert pte["extra"]["lowering"]["portable_ops"] == {}
    assert rows[("static-ignore", PTE)]["ignored"] == ["fc"]
    assert rows[("static-ignore", PTE)]["float_layers"] == 1
    assert "every compute operator lowered to XNNPACK" in " ".join(doc["notes"])
    assert PTE in (out / "quantize.md").read_text()


def test_bench_reruns_the_pte_programs(quantized):
    out, doc, _ = quantized
    proc = run("bench", str(out), "--threads", "1", "--no-lower")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads((out / "bench.json").read_text())
    before = {(r["variant"], r["backend"]): r["accuracy"] for r in doc["results"]}
    after = {(r["variant"], r["backend"]): r["accuracy"] for r in bench["results"]}
    for key in (("static", PTE), ("static-ignore", PTE)):
        assert after[key] == pytest.approx(before[key])


@pytest.mark.parametrize(
    "args, message",
    [
        (["quantize", "digits_cnn", "--export", "pte"], "--quantizer xnnpack"),
        (["quantize", "digits_cnn", "--quantizer", "arm"], "x86, xnnpack"),
        (["quantize", "digits_cnn", "--quantizer", "xnnpack", "--export", "tflite"], "pte"),
        (["qat", "digits_cnn", "--export", "pte"], "--quantizer xnnpack"),
        (["pipeline", "digits_cnn", "--export", "pte"], "--quantizer xnnpack"),
    ],
)
def test_bad_quantizer_or_export_exits_2_and_writes_nothing(args, message, tmp_path):
    out = tmp_path / "out"
    proc = run(*args, "--out", str(out))
    assert proc.returncode == 2
    assert message in " ".join(proc.stdout.split() + proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_qat_with_xnnpack_deploys_a_pte(tmp_path, digits_models):
    out = tmp_path / "qat"
    proc = run(
        "qat",
        "digits_cnn",
        "--quantizer",
        "xnnpack",
        "--export",
        "pte",
        "--epochs",
        "1",
        "--train-limit",
        "256",
        "--no-onnx",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "qat.json").read_text())
    rows = {r["backend"]: r for r in doc["results"]}
    assert set(rows) == {"pytorch", "pt2e-xnnpack", PTE}
    assert doc["config"]["backend"] == "xnnpack" and doc["artifacts"]["pte"]
    pte = rows[PTE]
    assert pte["agreement_pt2e"] >= 0.99 and pte["extra"]["twin"] == ["qat", "pt2e-xnnpack"]
    assert pte["runtime"] == "executorch" and pte["extra"]["runtime_threads"] == 1
    program = PteModel(doc["artifacts"]["pte"])
    cnn = load_model("digits_cnn")
    assert pte["accuracy"] == pytest.approx(
        accuracy(program, load_data("digits"), "test", cnn.spec)
    )


def test_pipeline_offers_each_pte_program_to_the_final_choice(tmp_path, digits_models):
    out = tmp_path / "pipe"
    proc = run(
        "pipeline",
        "digits_cnn",
        "--quantizer",
        "xnnpack",
        "--export",
        "pte",
        "--max-drop",
        "1",
        "--stats-images",
        "128",
        "--val",
        "150",
        "--calib",
        "128",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "pipeline.json").read_text())
    rows = [(r["variant"], r["backend"]) for r in doc["results"]]
    pt2e = [v for v, b in rows if b == "pt2e-xnnpack"]
    assert pt2e and [v for v, b in rows if b == PTE] == pt2e  # one program per pt2e variant
    lowered = [d for d in doc["decisions"] if d["step"].endswith(".pte")]
    assert len(lowered) == len(pt2e)
    assert all("XNNPACK subgraph" in d["reason"] for d in lowered)
    for r in doc["results"]:
        if r["backend"] == PTE:
            assert 0 < r["val_accuracy"] <= 1 and r["latency_ms_per_image"] > 0
            assert r["artifact"].endswith(".pte") and r["runtime"] == "executorch"
            assert not r["simulated"] and r["agreement_pt2e"] is not None  # vs its pt2e twin
    final = doc["final"]
    assert (final["variant"], final["backend"]) in rows
    assert f"({final['backend']})" in doc["final_reason"]


def test_dynamic_with_xnnpack_is_the_quantizers_dynamic_config_lowered(tmp_path, digits_models):
    out = tmp_path / "dyn"
    proc = run(
        "quantize",
        "digits_cnn",  # lowers in seconds; a ViT takes a minute (tests/test_executorch.py)
        "--method",
        "dynamic",
        "--quantizer",
        "xnnpack",
        "--export",
        "pte",
        "--no-onnx",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "quantize.json").read_text())
    rows = {(r["variant"], r["backend"]): r for r in doc["results"]}
    assert set(rows) == {("fp32", "pytorch"), ("dynamic", "pt2e-xnnpack"), ("dynamic", PTE)}
    cnn = load_model("digits_cnn")
    linears = [n for n, m in cnn.model.named_modules() if isinstance(m, torch.nn.Linear)]
    pt2e, pte = rows[("dynamic", "pt2e-xnnpack")], rows[("dynamic", PTE)]
    # dynamic int8 is the Linear layers only: the convolutions stay float
    assert pt2e["extra"]["int8"] == linears == ["fc"]
    assert pt2e["extra"]["float"] == ["conv1", "conv2", "conv3"]
    assert pt2e["extra"]["config"]["is_dynamic"] is True
    assert abs(pte["accuracy"] - pt2e["accuracy"]) * 100 <= 0.6 and pte["agreement_pt2e"] >= 0.99
    # the saved dynamic graph and program reload and score the same
    proc = run("bench", str(out), "--threads", "1", "--no-lower")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = {
        (r["variant"], r["backend"]): r
        for r in json.loads((out / "bench.json").read_text())["results"]
    }
    for key in (("dynamic", "pt2e-xnnpack"), ("dynamic", PTE)):
        assert bench[key]["accuracy"] == pytest.approx(rows[key]["accuracy"])


def test_export_without_an_int8_variant_is_refused():
    from vitquant.errors import VitquantError
    from vitquant.quant.configs import StaticPTQ
    from vitquant.quant.run import QuantizeJob

    with pytest.raises(VitquantError, match="none is requested"):
        QuantizeJob(static=StaticPTQ(backend="xnnpack"), variants=("fp32",), export="pte")
