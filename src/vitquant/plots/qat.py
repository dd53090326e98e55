"""QAT and search plots: accuracy per epoch, and Optuna's own matplotlib visualizations.

``epoch_curves`` / ``trial_curves`` compute the plotted numbers (testable without drawing); the
``plot_*`` functions only render them. The study plots are Optuna's
``optuna.visualization.matplotlib`` drawings of the study as stored.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def epoch_curves(history: list[dict]) -> dict[str, list]:
    """``epoch``, ``float_val_acc`` and ``int8_val_acc`` columns of a QAT history."""
    return {
        "epoch": [h["epoch"] for h in history],
        "float_val_acc": [h["float_val_acc"] for h in history],
        "int8_val_acc": [h["int8_val_acc"] for h in history],
    }


def plot_qat_history(
    history: list[dict],
    path: str | Path,
    *,
    best_epoch: int | None = None,
    title: str = "",
) -> Path:
    """Validation accuracy per epoch, float (fake-quant off) and int8 (converted copy).

    Epoch 0 is the calibrated model before training (static PTQ with the QAT quantizer).
    """
    c = epoch_curves(history)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(c["epoch"], c["float_val_acc"], "o-", label="float (fake-quant off)")
    ax.plot(c["epoch"], c["int8_val_acc"], "s-", label="int8 (converted)")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="#98a2b3", linestyle="--", label=f"kept: epoch {best_epoch}")
    ax.set_xlabel("epoch (0 = calibrated, before training)")
    ax.set_ylabel("validation accuracy")
    ax.set_xticks(c["epoch"])
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "QAT: validation accuracy per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def trial_curves(summary: dict) -> dict[int, list[tuple[int, float]]]:
    """Trial number -> [(epoch, int8 val accuracy)] from a ``search.summarize`` dict."""
    return {
        t["number"]: [(int(k), v) for k, v in t["intermediate"].items()]
        for t in summary["trials"]
        if t["intermediate"]
    }


def plot_trial_epochs(summary: dict, path: str | Path) -> Path:
    """Int8 validation accuracy per epoch of every trial (pruned trials end early)."""
    states = {t["number"]: t["state"] for t in summary["trials"]}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for number, points in trial_curves(summary).items():
        xs, ys = zip(*points, strict=True)
        style = "--" if states[number] == "PRUNED" else "-"
        ax.plot(xs, ys, style, marker="o", label=f"#{number} {states[number].lower()}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("int8 validation accuracy")
    ax.grid(alpha=0.3)
    if len(states) <= 12:
        ax.legend(fontsize=8)
    ax.set_title("QAT search: accuracy per epoch of each trial")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_study(study, directory: str | Path) -> tuple[dict[str, str], list[str]]:
    """Optuna's optimization history and parameter importances as PNGs in ``directory``.

    Returns:
        (name -> path of each plot drawn, notes on plots that could not be drawn - e.g.
        importances need at least two complete trials).
    """
    from optuna.visualization import matplotlib as ovm

    directory = Path(directory)
    drawn, notes = {}, []
    for name, fn in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental API, equal-importance notices
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            path = directory / f"search_{name}.png"
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            drawn[name] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes.append(f"{name} not drawn: {exc}")
    return drawn, notes
