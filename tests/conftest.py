"""Session fixtures shared by the test suite: assets location and the trained digits models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VITQUANT_ASSETS", str(REPO.parent / "shared"))
os.environ.setdefault("VITQUANT_QUIET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two xdist workers on this 2-core machine: one thread each (the CLI
    # subprocesses inherit it), so they do not oversubscribe the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared assets; their absence is a failure (CI always has them), never a skip."""
    path = Path(os.environ["VITQUANT_ASSETS"])
    if not (path / "data" / "cifar10").is_dir():
        pytest.fail(f"shared assets not found at {path}: set VITQUANT_ASSETS")
    return path


@pytest.fixture(scope="session")
def digits_models() -> dict[str, str]:
    """Train (once, into the user cache) and return the digits checkpoints."""
    from filelock import FileLock

    from vitquant.paths import cache_dir
    from vitquant.prepare import ensure_trained

    # Two xdist workers may both find the cache empty: one trains, the other waits for it.
    with FileLock(str(cache_dir() / "digits-training.lock")):
        return {n: ensure_trained(n, log=lambda s: None) for n in ("digits_vit", "digits_cnn")}


@pytest.fixture(scope="session")
def forced_qat_pipeline(tmp_path_factory, digits_models) -> Path:
    """A real `vitquant pipeline` run on digits with the QAT branch forced (--max-drop 0)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("pipeline-run") / "run"
    args = [
        "pipeline",
        "digits_vit",
        "--data",
        "digits",
        "--max-drop",
        "0",
        "--force-qat",
        "--trials",
        "2",
        "--qat-epochs",
        "1",
        "--qat-train-limit",
        "256",
        "--no-lower",
        "--stats-images",
        "128",
        "--val",
        "150",
        "--calib",
        "128",
        "--out",
        str(out / "pipeline"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "vitquant", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out
