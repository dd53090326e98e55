"""Session fixtures shared by the test suite: assets location and the trained digits models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VITQUANT_ASSETS", str(REPO.parent / "shared"))
os.environ.setdefault("VITQUANT_QUIET", "1")


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
    from vitquant.prepare import ensure_trained

    return {name: ensure_trained(name, log=lambda s: None) for name in ("digits_vit", "digits_cnn")}
