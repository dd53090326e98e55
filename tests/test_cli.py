"""The command line: results land in DIR/<command>.json; bad input exits non-zero, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vitquant.data import load_data
from vitquant.evaluate import accuracy
from vitquant.registry import load_model


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitquant", *args], capture_output=True, text=True, timeout=600
    )


def test_eval_writes_the_results_row(tmp_path, digits_models):
    out = tmp_path / "ev"
    proc = run("eval", "digits_cnn", "--data", "digits", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "eval.json").read_text())
    loaded = load_model("digits_cnn")
    expected = accuracy(loaded.model, load_data("digits"), "test", loaded.spec)
    assert result["accuracy"] == pytest.approx(expected)
    assert result["n"] == 360 and result["model"] == "digits_cnn"
    assert result["checkpoint"] == digits_models["digits_cnn"]
    assert result["size_mb"] > 0 and result["latency_ms_per_image"] > 0
    assert result["results"][0]["variant"] == "fp32"
    # a second run refuses to overwrite silently
    again = run("eval", "digits_cnn", "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "cifar_vt"], "Did you mean: cifar_vit"),
        (["eval", "digits_cnn", "--checkpoint", "/nonexistent/x.pt"], "not found at"),
        (["eval", "cifar_vit", "--data", "digits"], "differ from digits"),
        (["eval", "digits_cnn", "--data", "/nonexistent/folder"], "does not exist"),
        (["eval", "timm:deit_smal_patch16_224"], "timm:deit_small_patch16_224"),
    ],
)
def test_bad_input_gets_a_message_and_exit_2(args, message, tmp_path, digits_models):
    proc = run(*args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert message in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "eval.json").exists()


def test_layers_lists_quantizable_modules(tmp_path):
    proc = run("layers", "digits_vit", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "layers.json").read_text())["layers"]}
    assert (
        rows["blocks.0.attn.qkv"]["type"] == "Linear" and rows["blocks.0.attn.qkv"]["quantizable"]
    )
    assert rows["blocks.0.attn.qkv"]["params"] == 64 * 192 + 192
    assert not rows["blocks.0.norm1"]["quantizable"]


def test_every_command_explains_its_options():
    proc = run("--help")
    commands = [c for c in ("eval", "train", "layers", "models") if c in proc.stdout]
    assert len(commands) == 4
    for command in commands:
        help_text = run(command, "--help").stdout
        assert "--out" in help_text or command == "models"


def test_bracketed_defaults_in_help_texts_are_shown():
    # help strings are plain text: "[default: ...]" written in a help string must survive
    text = " ".join(run("quantize", "--help").stdout.split())
    assert "[default: min(1000, 15% of train)]" in text
    assert "[default: minmax for x86, histogram for xnnpack]" in text
    assert "--quantizer" in text and "--export" in text
