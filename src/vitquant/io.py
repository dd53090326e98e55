"""Atomic, no-surprise output writing: a file is either fully written or not there at all."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitquant.errors import VitquantError


def _jsonable(obj: Any) -> Any:
    """Turn numpy scalars/arrays, Paths and NaN into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write(path: Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path, data: Any) -> Path:
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    return write_text(path, text)


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Refuse to replace an existing result file unless the user said so."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise VitquantError(
            f"{path} already exists; pass --overwrite to replace it or choose another --out."
        )
