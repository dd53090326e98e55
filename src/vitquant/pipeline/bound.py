"""The pipeline's heavier steps, bound to a model and data: analysis and the QAT search.

Kept apart from the steps (``steps.py``) so the flow (decisions, final rule) reads on its
own and these steps can be swapped in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vitquant.data import DataBundle
from vitquant.io import write_json


def analysis_step(model, spec, bundle: DataBundle, cfg, *, log: Callable[[str], None]):
    """``analyze(out_dir) -> stats``: outliers (calib role) and weight change scores, with the
    analyze command's plots and an ``analyze.json`` of the same shape in ``out_dir``."""

    def analyze(out_dir: Path):
        from vitquant.analysis.stats import collect_activation_stats
        from vitquant.analysis.summary import analysis_document
        from vitquant.analysis.weights import weight_histograms, weight_stats
        from vitquant.plots.analysis import write_analysis_figures

        stats = collect_activation_stats(
            model,
            bundle,
            spec,
            role="calib",
            limit=cfg.stats_images,
            threshold=cfg.threshold,
            progress=False,
        )
        weights = weight_stats(model, threshold=cfg.threshold)
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = write_analysis_figures(
            out_dir,
            stats,
            weights,
            weight_histograms(model),
            threshold=cfg.threshold,
            title=spec.name,
        )
        write_json(
            out_dir / "analyze.json",
            {
                "model": spec.name,
                "role": "calib",
                "n_images": min(cfg.stats_images, len(bundle.calib_idx)),
                "threshold_pct": cfg.threshold,
                **analysis_document(stats, weights),
                "figures": figures,
            },
        )
        return stats

    return analyze


def qat_step(name: str, loaded, bundle: DataBundle, cfg, out: Path, *, log):
    """``qat() -> (converted, details)``: an Optuna search over QAT lr, momentum and weight
    decay (objective: int8 val accuracy), then the best trial's parameters retrained and kept.

    The study lives in ``out/qat/search.db`` (SQLite), so re-running the pipeline resumes it.
    """

    def qat():
        from vitquant.plots.qat import plot_qat_history, plot_study
        from vitquant.quant.qat import QATConfig, run_qat
        from vitquant.quant.search import (
            QATObjective,
            SearchConfig,
            open_study,
            run_search,
            sqlite_url,
        )
        from vitquant.quant.search import summarize as summarize_study

        directory = out / "qat"
        directory.mkdir(parents=True, exist_ok=True)
        low = cfg.lowbit  # a low-bit target trains at its W/A bits and per-layer rules
        bits = {} if low is None else dict(wbits=low.wbits, abits=low.abits, bits=low.rules)
        base = QATConfig(
            epochs=cfg.qat_epochs,
            train_limit=cfg.qat_train_limit,
            backend=cfg.backend,
            per_channel=cfg.per_channel,
            **bits,
        )
        scfg = SearchConfig(
            trials=cfg.trials,
            study=f"pipeline-{name.replace(':', '_')}",
            storage=sqlite_url(directory / "search.db"),
        )
        identity = {
            "model": name,
            "data": bundle.name,
            "n_val": len(bundle.val_idx),
            "base": base.to_dict(),
        }
        study = open_study(scfg, identity)
        # keep_results: the best trial's model is reused, not retrained, when this process ran it
        objective = QATObjective(loaded.model, loaded.spec, bundle, base, keep_results=True)
        run_search(study, scfg, objective, log=log)
        summary = summarize_study(study)
        plot_study(study, directory)
        write_json(directory / "search.json", summary)
        best = summary["best"]["params"]
        result = objective.result(best)
        if result is None:  # the best trial ran in an earlier, interrupted run: retrain it
            log(f"QAT: retraining the best trial's parameters {best}")
            result = run_qat(loaded.model, loaded.spec, bundle, replace(base, **best), log=log)
        plot_qat_history(
            result.history, directory / "qat_accuracy.png", best_epoch=result.best_epoch
        )
        best_cfg = replace(base, **best).to_dict()
        details = {
            "best_params": best,
            "trials": summary["counts"],
            "config": best_cfg,
            "best_epoch": result.best_epoch,
            "best_val": result.best_val,
            "history": result.history,
        }
        return result.converted, details

    return qat
