"""What the command line does with the user's inputs: first use, checkpoints, numbers, options.

Each bad input exits 2 with one clear line and writes no result file; each new option changes
what the command records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from vitquant.cli import app
from vitquant.registry import load_model


@pytest.fixture(autouse=True)
def _loud_again():
    # In-process invocations hide third-party warnings for the whole pytest process: undo it.
    yield
    from vitquant import quiet

    quiet.reset()


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitquant", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


# -- 1. the embedded digits models are trained on first use ---------------------------------


def test_a_fresh_cache_trains_the_digits_model_and_says_so(tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "ev"
    proc = run(
        "eval",
        "digits_vit",
        "--data",
        "digits",
        "--limit",
        "50",
        "--out",
        str(out),
        env={"VITQUANT_CACHE": str(cache)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if "no cached checkpoint" in line]
    assert lines == ["digits_vit: no cached checkpoint, training it (about 20 s) ..."]
    trained = cache / "checkpoints" / "digits_vit.pt"
    assert trained.is_file()
    result = json.loads((out / "eval.json").read_text())
    assert result["checkpoint"] == str(trained)
    assert result["accuracy"] >= 0.9  # a trained model, not random weights (~0.1)


def test_an_explicit_checkpoint_or_random_weights_never_trains(tmp_path, monkeypatch):
    from vitquant.cli import common

    monkeypatch.setenv("VITQUANT_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr("vitquant.prepare.ensure_trained", lambda name, log: calls.append(name))
    common.ensure_weights("digits_vit", checkpoint=tmp_path / "x.pt")
    common.ensure_weights("digits_vit", checkpoint=None, random_weights=True)
    common.ensure_weights("cifar_vit", checkpoint=None)  # an assets checkpoint: never trained
    common.ensure_weights("timm:deit_tiny_patch16_224", checkpoint=None)
    assert calls == []
    common.ensure_weights("digits_cnn", checkpoint=None)
    assert calls == ["digits_cnn"]


# -- 3. layers --checkpoint loads it strictly -------------------------------------------------


def test_layers_loads_the_checkpoint_it_is_given(tmp_path):
    good, bad = tmp_path / "vit.pt", tmp_path / "cnn.pt"
    torch.save(load_model("digits_vit", random_weights=True).model.state_dict(), good)
    torch.save(load_model("digits_cnn", random_weights=True).model.state_dict(), bad)

    proc = run("layers", "digits_vit", "--checkpoint", str(bad), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2
    assert error_lines(proc) and error_lines(proc)[0].startswith("error: checkpoint ")
    assert "does not fit this model" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "b" / "layers.json").exists()

    proc = run("layers", "digits_vit", "--checkpoint", str(good), "--out", str(tmp_path / "g"))
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoint {good} loaded" in proc.stdout
    assert json.loads((tmp_path / "g" / "layers.json").read_text())["checkpoint"] == str(good)


# -- 4. bad input: out-of-range numbers, files that are not state_dicts, head sizes ----------


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "digits_vit", "--threads", "0"],
        ["eval", "digits_vit", "--limit", "-1"],
        ["eval", "digits_vit", "--calib", "-5"],
        ["eval", "digits_vit", "--val", "-1"],
        ["eval", "digits_vit", "--latency-batch", "0"],
        ["quantize", "digits_vit", "--threads", "-2"],
        ["quantize", "digits_vit", "--percentile", "101"],
        ["quantize", "digits_vit", "--x86-float", "fp16"],
        ["pipeline", "digits_vit", "--x86-float", "half"],
        ["qat", "digits_vit", "--epochs", "0"],
        ["qat", "digits_vit", "--batch-size", "0"],
        ["qat", "digits_vit", "--train-limit", "-1"],
        ["search", "digits_vit", "--trials", "-1"],
        ["pipeline", "digits_vit", "--trials", "0"],
        ["pipeline", "digits_vit", "--max-drop", "-1"],
        ["train", "digits_vit", "--epochs", "0"],
        ["compare", "digits_vit", "digits_cnn", "--stats-images", "0"],
    ],
    ids=lambda a: " ".join(a[:1] + a[2:]),
)
def test_out_of_range_numbers_are_refused_before_anything_runs(args, tmp_path):
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    option = next(a for a in args if a.startswith("--"))
    assert "Invalid value" in res.output and option in res.output
    assert list(tmp_path.iterdir()) == []


def test_no_qat_and_force_qat_contradict(tmp_path):
    proc = run("pipeline", "digits_vit", "--no-qat", "--force-qat", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "error: --force-qat and --no-qat contradict each other: pass one of them."
    ]


def _pickled_module(path):
    torch.save(load_model("digits_vit", random_weights=True).model, path)


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (_pickled_module, "it holds a pickled timm.models.vision_transformer.VisionTransformer"),
        (_random_bytes, "it is not a PyTorch state_dict file"),
    ],
    ids=["pickled-module", "random-bytes"],
)
def test_a_checkpoint_that_is_not_a_state_dict_gets_one_line(write, says, tmp_path):
    path = tmp_path / "model.pt"
    write(path)
    proc = run("eval", "digits_vit", "--checkpoint", str(path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot read checkpoint {path}: {says}")
    assert "torch.save(model.state_dict(), PATH)" in lines[0]
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "eval.json").exists()


def test_a_checkpoint_with_another_head_size_names_both_sizes(tmp_path):
    state = load_model("digits_vit", random_weights=True).model.state_dict()
    state["head.weight"] = torch.zeros(1000, 64)
    state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "head1000.pt"
    torch.save(state, path)
    proc = run("eval", "digits_vit", "--checkpoint", str(path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"error: checkpoint {path} has a 1000-class head (head.weight 1000x64) but the data has "
        "10 classes; pass a checkpoint of digits_vit trained for its 10 classes."
    ]
    assert not (tmp_path / "o" / "eval.json").exists()


# -- 5. pipeline / qat / search take --random-weights, --pretrained, --num-classes; --no-qat --


@pytest.mark.parametrize("command", ["pipeline", "qat", "search"])
def test_weight_options_are_offered(command):
    text = CliRunner().invoke(app, [command, "--help"]).output
    for option in ("--random-weights", "--pretrained", "--num-classes", "--checkpoint"):
        assert option in text
    assert ("--no-qat" in text) == (command == "pipeline")


def test_qat_trains_random_weights_on_request(tmp_path):
    out = tmp_path / "qat"
    proc = run(
        "qat",
        "digits_cnn",
        "--random-weights",
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--calib",
        "32",
        "--val",
        "50",
        "--limit",
        "50",
        "--no-onnx",
        "--no-latency",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "qat.json").read_text())
    assert result["checkpoint"] == "random"
    assert len(result["history"]) >= 1 and result["n_test"] == 50


def test_pipeline_no_qat_skips_qat_and_records_why(tmp_path, digits_models):
    out = tmp_path / "pipeline"
    proc = run(
        "pipeline",
        "digits_vit",
        "--data",
        "digits",
        "--max-drop",
        "0",
        "--no-qat",
        "--no-lower",
        "--stats-images",
        "64",
        "--val",
        "100",
        "--calib",
        "64",
        "--limit",
        "100",
        "--sensitivity-limit",
        "50",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "pipeline.json").read_text())
    assert result["config"]["qat"] is False
    assert "qat" not in {r["variant"] for r in result["results"]}
    qat = [d for d in result["decisions"] if d["step"] == "qat"]
    assert len(qat) == 1 and qat[0]["decision"] == "skipped"
    assert qat[0]["reason"].startswith("QAT skipped: --no-qat")
    assert not (out / "qat").exists()
    assert "QAT skipped: --no-qat" in proc.stdout
