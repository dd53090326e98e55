"""The pipeline's heavier steps, bound to a model and data: analysis and the QAT search.

Kept apart from ``pipeline.py`` so the flow (decisions, final rule) reads on its own and these
steps can be swapped in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vitquant.data import DataBundle
from vitquant.io import write_json


def analysis_step(model, spec, bundle: DataBundle, cfg, *, log: Callable[[str], None]):
    """``analyze(out_dir) -> stats``: activation statistics (calib role) written as analyze.json."""

    def analyze(out_dir: Path):
        from vitquant.analysis.stats import collect_activation_stats

        stats = collect_activation_stats(
            model, bundle, spec, role="calib", limit=cfg.stats_images, threshold=cfg.threshold,
            progress=False,
        )  # fmt: skip
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "analyze.json", {"layers": [s.to_dict() for s in stats]})
        return stats

    return analyze


def qat_step(name: str, loaded, bundle: DataBundle, cfg, out: Path, *, log):
    """``qat() -> (converted, details)``: QAT fine-tuning of ``loaded.model`` (val-selected)."""

    def qat():
        from vitquant.quant.qat import QATConfig, run_qat

        qcfg = QATConfig(epochs=cfg.qat_epochs, train_limit=cfg.qat_train_limit,
                         backend=cfg.backend, per_channel=cfg.per_channel)  # fmt: skip
        result = run_qat(loaded.model, loaded.spec, bundle, qcfg, log=log)
        details = {"best_epoch": result.best_epoch, "best_val": result.best_val,
                   "history": result.history, "config": qcfg.to_dict()}  # fmt: skip
        return result.converted, details

    return qat
