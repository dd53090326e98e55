"""Where vitquant finds shared assets and where it caches what it builds.

Assets (data, reference checkpoints) are read-only and come from ``$VITQUANT_ASSETS``. Everything
vitquant writes for itself (decoded datasets, trained digits checkpoints) goes to a user cache dir,
``$VITQUANT_CACHE`` or ``$XDG_CACHE_HOME/vitquant`` (default ``~/.cache/vitquant``), never to the
assets or the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

from vitquant.errors import VitquantError


def assets_dir(required: bool = True) -> Path | None:
    """The shared assets folder from ``$VITQUANT_ASSETS``.

    Args:
        required: raise a VitquantError when it is unset or missing; otherwise return None.
    """
    value = os.environ.get("VITQUANT_ASSETS")
    if not value:
        if required:
            raise VitquantError(
                "VITQUANT_ASSETS is not set: point it at the shared assets folder, "
                "e.g. `export VITQUANT_ASSETS=../shared`."
            )
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        if required:
            raise VitquantError(f"VITQUANT_ASSETS={value} is not a folder ({path}).")
        return None
    return path


def cache_dir(*parts: str) -> Path:
    """A folder under the user cache dir, created on demand."""
    root = os.environ.get("VITQUANT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "vitquant"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
