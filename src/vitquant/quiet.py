"""Keep third-party chatter off the terminal unless the user asks for it (``--verbose``).

What it hides, each seen on a plain ``vitquant quantize`` run:

- torch's own log lines (``W1130 12:00:00 ... torch/utils/_pytree.py:630] ...``): the ``torch``
  logger tree has its own stderr handler, configured by ``torch._logging``; ``set_logs`` is the
  supported way to raise its level and it survives torch re-initialising its logs.
- ``UserWarning`` / ``DeprecationWarning`` / ``FutureWarning`` raised inside third-party packages
  (inductor's "To copy construct from a tensor ..."): a ``warnings`` filter per package.
- root-logger warnings of libraries that call ``logging.warning`` directly (ONNX Runtime's
  "Please consider pre-processing before quantization"): the root logger's level is raised, while
  the ``vitquant`` logger keeps WARNING so our own messages still show.

Errors always show. ``apply(verbose=True)`` undoes everything ``apply(verbose=False)`` did (see
``reset``), so the choice can be made early (from ``sys.argv``) and revised when Typer parses
``--verbose``.
"""

from __future__ import annotations

import logging
import os
import warnings

ENV = "VITQUANT_VERBOSE"
THIRD_PARTY = (
    "torch",
    "torchao",
    "torchvision",
    "executorch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "timm",
    "optuna",
    "sklearn",
    "matplotlib",
    "numpy",
    "scipy",
    "PIL",
    "sqlalchemy",
    "nncf",
    "openvino",
)
CATEGORIES = (UserWarning, DeprecationWarning, FutureWarning)
# Loggers to raise to ERROR; the ``torch`` tree is handled through torch._logging.set_logs.
LOGGERS = ("", "onnxruntime", "onnxscript", "executorch", "torchao", "timm", "nncf")

_saved_levels: dict[str, int] = {}
_added_filters: list[tuple] = []
_torch_quieted = False


def verbose_requested(argv: list[str] | None = None) -> bool:
    """True when ``$VITQUANT_VERBOSE`` is 1 or ``--verbose`` is among ``argv``."""
    return os.environ.get(ENV) == "1" or "--verbose" in (argv or [])


def apply(*, verbose: bool) -> None:
    """Hide third-party warnings and log lines (``verbose=False``) or let them through again.

    Idempotent; ``verbose=True`` also sets ``$VITQUANT_VERBOSE=1`` so child processes (the demo's
    steps, torchrun workers) inherit the choice.
    """
    if verbose:
        os.environ[ENV] = "1"
        reset()
    else:
        _silence()


def is_quiet() -> bool:
    """Whether third-party output is currently hidden."""
    return bool(_added_filters)


def _silence() -> None:
    global _torch_quieted
    if _added_filters:
        # Already quiet; but a ``warnings.catch_warnings()`` block entered since (a caller's or a
        # test's ``simplefilter("always")``) may have put filters in front of ours: move ours
        # back to the front so they still win.
        front = warnings.filters[: len(_added_filters)]
        if front != _added_filters[::-1]:
            for entry in _added_filters:
                if entry in warnings.filters:
                    warnings.filters.remove(entry)
            for entry in _added_filters:
                warnings.filters.insert(0, entry)
            warnings._filters_mutated()
        return
    pattern = rf"({'|'.join(THIRD_PARTY)})(\.|$)"
    for category in CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=pattern)
        _added_filters.append(warnings.filters[0])
    for name in LOGGERS:
        logger = logging.getLogger(name)
        _saved_levels[name] = logger.level
        logger.setLevel(logging.ERROR)
    own = logging.getLogger("vitquant")
    _saved_levels["vitquant"] = own.level
    if own.level == logging.NOTSET:
        own.setLevel(logging.WARNING)  # not inherited from the quieted root
    if "TORCH_LOGS" not in os.environ:  # an explicit TORCH_LOGS is the user's choice
        import torch._logging

        torch._logging.set_logs(all=logging.ERROR)
        _torch_quieted = True


def reset() -> None:
    """Undo what ``apply(verbose=False)`` did (warning filters, logger levels, torch's logs)."""
    global _torch_quieted
    for entry in _added_filters:
        if entry in warnings.filters:
            warnings.filters.remove(entry)
    # Let modules that met an "ignore" filter warn again (private, hence the guard).
    getattr(warnings, "_filters_mutated", lambda: None)()
    _added_filters.clear()
    for name, level in _saved_levels.items():
        logging.getLogger(name).setLevel(level)
    _saved_levels.clear()
    if _torch_quieted:
        import torch._logging

        torch._logging.set_logs()  # torch's defaults (WARNING)
        _torch_quieted = False
