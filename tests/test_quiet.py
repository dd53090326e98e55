"""Third-party warnings and log lines are hidden by default and shown with --verbose."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest

from vitquant import quiet

NOISE = re.compile(r"UserWarning|FutureWarning|DeprecationWarning|WARNING:root|^[WI]\d{4} ", re.M)


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.delenv(quiet.ENV, raising=False)
    monkeypatch.delenv("TORCH_LOGS", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen
        quiet.reset()


def _warn(module: str, message: str) -> None:
    warnings.warn_explicit(message, UserWarning, f"{module}.py", 1, module=module)


def test_third_party_warnings_are_hidden_and_ours_are_not(fresh):
    quiet.apply(verbose=False)
    _warn("torch._inductor.mkldnn_lowerings", "inductor noise")
    _warn("onnxruntime.quantization.quant_utils", "ort noise")
    _warn("vitquant.quant.run", "our warning")
    _warn("torchvision_like_but_ours", "not a third-party package")
    assert [str(w.message) for w in fresh] == ["our warning", "not a third-party package"]


def test_quiet_again_after_a_catch_warnings_block_put_its_filters_first(monkeypatch):
    """A second apply() inside catch_warnings + simplefilter("always") (what a caller or an
    earlier test may do after vitquant was quieted once) still hides third-party warnings."""
    monkeypatch.delenv(quiet.ENV, raising=False)
    quiet.apply(verbose=False)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet.apply(verbose=False)
            _warn("torch._inductor.mkldnn_lowerings", "inductor noise")
            _warn("vitquant.quant.run", "our warning")
        assert [str(w.message) for w in seen] == ["our warning"]
    finally:
        quiet.reset()


def test_verbose_lets_them_through_again(fresh):
    quiet.apply(verbose=False)
    quiet.apply(verbose=True)
    assert os.environ[quiet.ENV] == "1"  # inherited by child processes
    _warn("torch._inductor.mkldnn_lowerings", "inductor noise")
    assert [str(w.message) for w in fresh] == ["inductor noise"]


def test_log_levels_hide_torch_and_root_warnings_but_not_ours(fresh):
    quiet.apply(verbose=False)
    assert not logging.getLogger("torch.utils._pytree").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("torch._inductor").isEnabledFor(logging.WARNING)
    assert not logging.getLogger().isEnabledFor(logging.WARNING)  # ORT's logging.warning(...)
    assert logging.getLogger("torch").isEnabledFor(logging.ERROR)
    assert logging.getLogger("vitquant.quant").isEnabledFor(logging.WARNING)
    quiet.reset()
    assert logging.getLogger("torch.utils._pytree").isEnabledFor(logging.WARNING)
    assert logging.getLogger().isEnabledFor(logging.WARNING)


def test_verbose_is_read_from_the_command_line_and_the_environment(monkeypatch):
    monkeypatch.delenv(quiet.ENV, raising=False)
    assert quiet.verbose_requested(["quantize", "digits_vit", "--verbose"])
    assert not quiet.verbose_requested(["quantize", "digits_vit"])
    monkeypatch.setenv(quiet.ENV, "1")
    assert quiet.verbose_requested([])


def quantize(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "quantize",
        "digits_vit",
        "--data",
        "digits",
        "--method",
        "static",
        "--limit",
        "50",
        "--calib",
        "32",
        "--val",
        "50",
        "--out",
        str(tmp_path),
        "--overwrite",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k not in (quiet.ENV, "TORCH_LOGS")}
    proc = subprocess.run(
        [sys.executable, "-m", "vitquant", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_quantize_prints_no_third_party_noise(tmp_path, digits_models):
    # Without the filters this run prints torch's "W1130 ... _pytree.py] ..." line, inductor's
    # UserWarnings (lowering) and ONNX Runtime's "WARNING:root:Please consider pre-processing".
    proc = quantize(tmp_path)
    assert NOISE.findall(proc.stderr) == [], proc.stderr
    assert (tmp_path / "quantize.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["after", "before"])
def test_verbose_shows_the_noise_again(tmp_path, digits_models, where):
    extra = ("--no-lower",)  # the cheapest run that still logs through torch and ORT
    if where == "after":
        proc = quantize(tmp_path, *extra, "--verbose")
    else:
        env = {k: v for k, v in os.environ.items() if k != quiet.ENV}
        args = [
            "--verbose",
            "quantize",
            "digits_vit",
            "--data",
            "digits",
            "--method",
            "static",
            "--limit",
            "50",
            "--calib",
            "32",
            "--val",
            "50",
            "--no-onnx",
            *extra,
            "--out",
            str(tmp_path),
            "--overwrite",
        ]
        proc = subprocess.run(
            [sys.executable, "-m", "vitquant", *args],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^W\d{4} .*_pytree", proc.stderr, re.M), proc.stderr
    if where == "after":
        assert "WARNING:root:Please consider" in proc.stderr
