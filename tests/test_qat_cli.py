"""`vitquant qat`: qat.json, the saved int8 artifacts, and their accuracy re-measured from disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vitquant.data import load_data
from vitquant.evaluate import accuracy
from vitquant.quant.artifacts import load_pt2e
from vitquant.quant.onnx_backend import OrtModel
from vitquant.quant.pt2e import split_int8
from vitquant.registry import load_model
from vitquant.results import validate_rows


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitquant", *args], capture_output=True, text=True, timeout=900
    )


def test_qat_writes_results_and_deployable_artifacts(tmp_path, digits_models):
    out = tmp_path / "qat"
    args = (
        "qat",
        "digits_vit",
        "--epochs",
        "1",
        "--train-limit",
        "192",
        "--calib",
        "64",
        "--lr",
        "0.002",
        "--ignore",
        "head",
        "--no-latency",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    proc = run(*args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "qat.json").read_text())

    history = result["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    vals = [h["int8_val_acc"] for h in history]
    assert result["best_epoch"] == vals.index(max(vals)) and result["best_val_acc"] == max(vals)
    assert result["config"]["train_limit"] == 192 and result["ignored"] == ["head"]

    rows = {(r["variant"], r["backend"]): r for r in result["results"]}
    assert set(rows) == {("fp32", "pytorch"), ("qat", "pt2e-x86"), ("qat", "onnxruntime")}
    bundle = load_data("digits", calib=64)
    loaded = load_model("digits_vit")
    fp32 = accuracy(loaded.model, bundle, "test", loaded.spec)
    assert rows["fp32", "pytorch"]["accuracy"] == pytest.approx(fp32)

    # The saved .pt2 reproduces the reported int8 accuracy, and `head` really stayed float.
    pt2 = load_pt2e(result["artifacts"]["pt2"])
    qat_row = rows["qat", "pt2e-x86"]
    assert accuracy(pt2, bundle, "test", loaded.spec) == pytest.approx(qat_row["accuracy"])
    int8, floats = split_int8(loaded.model, pt2)
    assert floats == ["head"] and qat_row["float_layers"] == 1
    assert qat_row["int8_layers"] == len(int8) == 13
    assert qat_row["drop_pts"] == pytest.approx((fp32 - qat_row["accuracy"]) * 100, abs=1e-3)
    # Only int8 constants are saved (the QAT float weights are dropped at conversion).
    assert qat_row["size_mb"] < 0.8 * rows["fp32", "pytorch"]["size_mb"]

    # The ONNX file runs in ONNX Runtime with the reported accuracy, close to the pt2e graph.
    ort_row = rows["qat", "onnxruntime"]
    ort = OrtModel(result["artifacts"]["onnx"], threads=1)
    assert accuracy(ort, bundle, "test", loaded.spec) == pytest.approx(ort_row["accuracy"])
    assert abs(ort_row["accuracy"] - qat_row["accuracy"]) <= 0.02
    assert ort_row["agreement_pt2e"] >= 0.95 and ort_row["extra"]["twin"] == ["qat", "pt2e-x86"]
    assert result["test_acc"] == qat_row["accuracy"]
    validate_rows(result["results"])
    assert (out / "qat_int8_accuracy.png").stat().st_size > 0

    again = run(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_qat_bad_options_exit_2(tmp_path, digits_models):
    proc = run("qat", "digits_vit", "--epochs", "0", "--out", str(tmp_path / "q"))
    assert proc.returncode == 2 and "--epochs" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("qat", "digits_vit", "--ignore", "blocks.9", "--out", str(tmp_path / "q"))
    assert proc.returncode == 2 and "blocks.9" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("search", "digits_vit", "--lr-range", "1e-3", "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "LOW:HIGH" in proc.stderr
