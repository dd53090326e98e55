"""`vitquant quantize` and `vitquant bench`: the results rows, their files, and refusals."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from vitquant.cli.quantize_cmd import parse_top_k
from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.layers import quantizable_names
from vitquant.quant.artifacts import pt2e_weight_dtypes
from vitquant.registry import load_model

REQUIRED = ("variant", "backend", "accuracy", "drop_pts", "size_mb", "latency_ms_per_image")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitquant", *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, digits_models):
    out = tmp_path_factory.mktemp("q") / "run"
    proc = run(
        "quantize",
        "digits_cnn",
        "--ignore",
        "fc",
        "--ignore",
        "conv1.weight",
        "--no-lower",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "quantize.json").read_text()), proc.stdout


def test_quantize_writes_one_row_per_variant_and_backend(quantized):
    out, doc, stdout = quantized
    rows = {(r["variant"], r["backend"]): r for r in doc["results"]}
    assert set(rows) == {
        ("fp32", "pytorch"),
        ("fp32", "onnxruntime"),
        ("dynamic", "pytorch"),
        ("dynamic", "onnxruntime"),
        ("static", "pt2e-x86"),
        ("static", "onnxruntime"),
        ("static-ignore", "pt2e-x86"),
        ("static-ignore", "onnxruntime"),
    }
    for r in doc["results"]:
        assert all(r[k] is not None for k in REQUIRED)
        assert 0 <= r["accuracy"] <= 1 and r["size_mb"] > 0 and r["latency_threads"] == 1
    # fp32 accuracy against an independent evaluation of the float model
    cnn = load_model("digits_cnn")
    fp32 = accuracy(cnn.model, load_data("digits"), "test", cnn.spec)
    assert rows[("fp32", "pytorch")]["accuracy"] == pytest.approx(fp32)
    for r in doc["results"]:
        assert r["drop_pts"] == pytest.approx((fp32 - r["accuracy"]) * 100, abs=1e-3)
    # the ignore list, with the parameter name mapped to its module (and said so)
    for backend in ("pt2e-x86", "onnxruntime"):
        row = rows[("static-ignore", backend)]
        assert row["ignored"] == ["conv1", "fc"]
        assert row["int8_layers"] == 2 and row["float_layers"] == 2
    assert "mapped parameter conv1.weight to module conv1" in doc["ignore"]["notes"]
    assert "mapped parameter conv1.weight" in stdout
    # eager pt2e timing is labelled as emulation; ORT rows are compared with their twin
    assert rows[("static", "pt2e-x86")]["simulated"] is True
    assert rows[("static", "onnxruntime")]["simulated"] is False
    ort, twin = rows[("static", "onnxruntime")], rows[("static", "pt2e-x86")]
    assert ort["extra"]["twin"] == ["static", "pt2e-x86"]
    assert abs(ort["accuracy"] - twin["accuracy"]) * 100 <= 1.5 and ort["agreement_pt2e"] >= 0.97
    # the saved static artifact holds int8 weights for every Linear/Conv
    static = rows[("static", "pt2e-x86")]
    assert static["int8_layers"] == len(quantizable_names(cnn.model)) == 4
    assert set(pt2e_weight_dtypes(static["artifact"]).values()) == {torch.int8}


def test_csv_and_markdown_twins_hold_the_same_rows(quantized):
    out, doc, _ = quantized
    with open(out / "quantize.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["variant"], r["backend"]) for r in table] == [
        (r["variant"], r["backend"]) for r in doc["results"]
    ]
    assert [float(r["accuracy"]) for r in table] == [r["accuracy"] for r in doc["results"]]
    md = (out / "quantize.md").read_text()
    assert md.count("\n| static-ignore |") == 2


def test_bench_remeasures_the_saved_artifacts(quantized):
    out, doc, _ = quantized
    proc = run("bench", str(out), "--no-lower", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = json.loads((out / "bench.json").read_text())
    assert len(bench["results"]) == len(doc["results"])
    for old, new in zip(doc["results"], bench["results"], strict=True):
        assert (old["variant"], old["backend"]) == (new["variant"], new["backend"])
        # the same artifacts on the same images give the same accuracy
        assert new["accuracy"] == pytest.approx(old["accuracy"], abs=1e-6)
        assert new["size_mb"] == pytest.approx(old["size_mb"])
    assert (out / "bench.csv").is_file() and (out / "bench.md").is_file()
    again = run("bench", str(out), "--no-lower")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_an_ignore_typo_exits_2_with_suggestions_and_writes_nothing(tmp_path, digits_models):
    out = tmp_path / "typo"
    proc = run("quantize", "digits_vit", "--ignore", "blocks.0.atn.qkv", "--out", str(out))
    assert proc.returncode == 2
    assert "blocks.0.attn.qkv" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "ks"), [("0..3", (0, 1, 2, 3)), ("0,2,5", (0, 2, 5)), ("2", (0, 1, 2)), (None, ())]
)
def test_parse_top_k(text, ks):
    assert parse_top_k(text) == ks


def test_parse_top_k_rejects_garbage():
    with pytest.raises(VitquantError, match="--ignore-top-k"):
        parse_top_k("a..b")
