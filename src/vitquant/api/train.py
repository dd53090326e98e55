"""``vq.qat`` (quantization-aware training) and ``vq.search`` (its Optuna search).

Both call the library's loop, ``vitquant.quant.qat.run_qat``: fake quantization inserted by the
pt2e quantizer, observers initialised on the calibration images, fine-tuned on ``train``, the
epoch with the best int8 accuracy on ``val`` kept. ``search`` runs ``run_search`` (Optuna, a
resumable SQLite study in ``out``) over the learning rate, momentum and weight decay with the
same objective, then retrains the best parameters. The kept model is a ``Quantized``, measured
against the float model by ``vitquant.measure`` when val/test images are given.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from vitquant.api.quantize import Quantized
from vitquant.api.results import QATRun, SearchRun
from vitquant.api.setup import Setup, scope_modules, setup


def _silent(line: str) -> None:
    pass


def _kept(s: Setup, cfg, result, modules, notes, *, measure, latency_batches, threads) -> QATRun:
    """The kept epoch as a ``Quantized`` with its rows, and the qat.json document."""
    from vitquant.api.evaluate import float_candidate, measure_rows
    from vitquant.quant.backends import get_backend
    from vitquant.quant.pt2e import split_int8

    converted = result.converted
    int8, floats = split_int8(s.model, converted)
    example = next(s.data.batches("val", s.spec, batch_size=8))[0]
    q = Quantized(
        payload={**s.describe(), "num_classes": s.spec.num_classes},
        module=converted,
        variant="qat",
        backend=get_backend(cfg.backend).graph_label,
        config=cfg,
        int8_layers=int8,
        float_layers=floats,
        ignored=list(modules),
        notes=list(notes),
        spec=s.spec,
        name=s.name,
        example=example,
        float_model=s.model,
    )
    rows = []
    if measure and (s.has("val") or s.has("test")):
        cands = [float_candidate(s.model), q.candidate()]
        rows = measure_rows(s, cands, latency_batches=latency_batches, threads=threads)
    q.rows = rows
    by_variant = {r.variant: r for r in rows}
    payload = {
        **s.describe(),
        "ignored": list(modules),
        "ignore_notes": list(notes),
        "config": cfg.to_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val,
        "diverged": result.diverged,
        "world_size": result.world_size,
        "qat_seconds": result.seconds,
        "results": [r.to_dict() for r in rows],
        "test_acc": by_variant["qat"].accuracy if "qat" in by_variant else None,
        "fp32_test_acc": by_variant["fp32"].accuracy if "fp32" in by_variant else None,
        "int8_layers": int8,
        "float_layers": floats,
        "notes": list(notes),
    }
    return QATRun(payload=payload, result=result, quantized=q, rows=rows)


def qat(
    model,
    config=None,
    *,
    ignore=None,
    data=None,
    train=None,
    calibration=None,
    val=None,
    test=None,
    measure: bool = True,
    latency_batches: Sequence[int] = (),
    threads: int | None = None,
    family: str | None = None,
    log: Callable[[str], None] | None = None,
) -> QATRun:
    """Quantization-aware training; keeps the epoch with the best int8 accuracy on val.

    Epoch 0 is static PTQ (observers calibrated, no training), so QAT never returns a model
    worse on val than PTQ with the same quantizer.

    Args:
        model: any ``nn.Module`` (or a registry name / ``load_model`` module); not modified.
        config: a ``QATConfig`` (default ``QATConfig()``: 3 epochs, SGD, x86 quantizer).
        ignore: layers kept in float (``IgnoreScope`` or names/globs/``type:X``).
        data: a named data set or ``vq.load_data(...)``.
        train, calibration, val, test: your own ``(images, labels)`` batches, fed as they are
            (``augment`` applies to named data only; ``train`` is held in memory to draw each
            epoch's seeded order). ``val`` chooses the epoch; ``test`` only reports.
        measure: measure fp32 and QAT rows on val/test.
        latency_batches: batch sizes timed (default none: QAT is about accuracy).
        threads: intra-op threads while measuring.
        family: ``vit`` or ``cnn`` (None: guessed).
        log: where the per-epoch lines go (None: silent).

    Returns:
        A ``QATRun``: ``result`` (history, best epoch), ``quantized`` (the kept int8 model:
        evaluate or export it), ``rows``; ``to_dict()`` as ``qat.json``.
    """
    from vitquant.quant.qat import QATConfig, run_qat

    cfg = config or QATConfig()
    s = setup(
        model,
        data=data,
        train=train,
        calibration=calibration,
        val=val,
        test=test,
        family=family,
    )
    s.require("fit", "val", why="QAT (it trains on train and keeps the best val epoch)")
    modules, notes, _ = scope_modules(s.model, ignore)
    result = run_qat(s.model, s.spec, s.data, cfg, ignore=modules, log=log or _silent)
    return _kept(
        s,
        cfg,
        result,
        modules,
        notes,
        measure=measure,
        latency_batches=latency_batches,
        threads=threads,
    )


def search(
    model,
    config=None,
    *,
    qat=None,
    trials: int = 10,
    out: str | Path | None = None,
    final: bool = True,
    ignore=None,
    data=None,
    train=None,
    calibration=None,
    val=None,
    test=None,
    family: str | None = None,
    log: Callable[[str], None] | None = None,
) -> SearchRun:
    """Optuna search over QAT's learning rate, momentum and weight decay (objective: the best
    int8 val accuracy), then the best parameters retrained and kept (``final``).

    Args:
        model: any ``nn.Module`` (or a registry name / ``load_model`` module).
        config: a ``SearchConfig`` (study, storage, space, pruning); default: ``trials``
            trials in ``sqlite:///OUT/search.db``, study ``qat-<model>``. Re-running with the
            same storage resumes the study.
        qat: the base ``QATConfig`` the searched values replace (default: 2 epochs).
        trials: finished trials the default study should hold.
        out: the folder of the default SQLite study (default: a new temporary folder).
        final: retrain the best trial's parameters and return them as ``final``.
        ignore, data, train, calibration, val, test, family: as for ``qat``.
        log: trial lines (None: silent).

    Returns:
        A ``SearchRun``: ``study`` (Optuna's), ``final`` (a ``QATRun``); ``to_dict()`` as
        ``search.json``.
    """
    import optuna

    from vitquant.quant.qat import QATConfig, run_qat
    from vitquant.quant.search import (
        SearchConfig,
        config_dict,
        open_study,
        run_search,
        sqlite_url,
        summarize,
    )

    t0 = time.perf_counter()
    say = log or _silent
    base = qat or QATConfig(epochs=2)
    s = setup(
        model,
        data=data,
        train=train,
        calibration=calibration,
        val=val,
        test=test,
        family=family,
    )
    s.require("fit", "val", why="the QAT search (it trains on train and scores on val)")
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="vitquant-search-"))
    out.mkdir(parents=True, exist_ok=True)
    scfg = config or SearchConfig(
        trials=trials,
        study=f"qat-{s.name.replace(':', '_')}",
        storage=sqlite_url(out / "search.db"),
    )
    modules, notes, _ = scope_modules(s.model, ignore)
    searched = {"lr", "momentum", "weight_decay"} | ({"epochs"} if scfg.space.epochs else set())
    identity = {
        "model": s.name,
        "checkpoint": s.checkpoint,
        "data": s.data.describe()["data"],
        "n_val": len(s.data.val_idx),
        "n_calib": len(s.data.calib_idx),
        "seed": base.seed,
        "ignored": modules,
        "space": asdict(scfg.space),
        "base": {k: v for k, v in base.to_dict().items() if k not in searched},
    }
    study = open_study(scfg, identity)

    def train_fn(params, report):
        result = run_qat(
            s.model,
            s.spec,
            s.data,
            replace(base, **params),
            ignore=modules,
            on_epoch=lambda epoch, rec, _m: epoch and report(epoch, rec["int8_val_acc"]),
            log=_silent,
        )
        return result.best_val, {"best_epoch": result.best_epoch, "history": result.history}

    worker = run_search(study, scfg, train_fn, log=say)
    summary = summarize(study)
    kept = None
    if final and summary["best"] is not None:
        cfg = replace(base, **summary["best"]["params"])
        result = run_qat(s.model, s.spec, s.data, cfg, ignore=modules, log=say)
        kept = _kept(s, cfg, result, modules, notes, measure=True, latency_batches=(), threads=None)
    elif final:
        notes = [*notes, "no COMPLETE trial: nothing to retrain"]
    final_part = None
    if kept is not None:
        final_part = {**kept.to_dict(), "trial": summary["best"]["number"]}
    payload = {
        **s.describe(),
        "search": config_dict(scfg),
        "base_config": base.to_dict(),
        "ignored": modules,
        "worker": asdict(worker),
        **summary,
        "plots": {},
        "notes": notes,
        "final": final_part,
        "seconds": time.perf_counter() - t0,
        "optuna": optuna.__version__,
    }
    return SearchRun(payload=payload, study=study, final=kept)
