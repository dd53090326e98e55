"""Opening the study: Optuna's RDB storage with heartbeats, the pruner, the per-trial sampler."""

from __future__ import annotations

import warnings

from vitquant.errors import VitquantError
from vitquant.quant.search.config import SearchConfig
from vitquant.quant.search.urls import driver_url, redact, sqlite_path
from vitquant.quant.search.workers import StudyLock


def make_storage(cfg: SearchConfig):
    """Optuna's RDB storage for ``cfg.storage`` with heartbeats on."""
    import optuna

    engine_kwargs = {}
    if cfg.storage.startswith("sqlite"):
        path = sqlite_path(cfg.storage)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                driver_url(cfg.storage),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
            )
    except Exception as exc:  # connection refused, unknown driver, bad URL, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VitquantError(
            f"cannot open the study storage {redact(cfg.storage)}: {first}. Check the URL, that "
            "the server runs and the database exists (PostgreSQL needs psycopg2-binary)."
        ) from exc


def open_study(cfg: SearchConfig, identity: dict):
    """Create or load the study; refuse one that was created for another model/data/space.

    Args:
        cfg: the search config.
        identity: what must match for trials to be comparable (model, data, base recipe, space).
    """
    import json

    import optuna

    identity = json.loads(json.dumps(identity))  # as stored: tuples become lists
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup, n_warmup_steps=cfg.pruner_warmup
        )
        if cfg.prune
        else optuna.pruners.NopPruner()
    )
    # Workers starting together on a fresh database would race creating Optuna's tables.
    lock = StudyLock(cfg.storage, "vitquant-open-storage")
    try:
        with lock.holding():
            storage = make_storage(cfg)
            study = optuna.create_study(
                study_name=cfg.study,
                storage=storage,
                direction="maximize",
                pruner=pruner,
                sampler=trial_sampler(cfg, 0),
                load_if_exists=True,
            )
            saved = study.user_attrs.get("vitquant")
            if saved is None:
                study.set_user_attr("vitquant", identity)
    finally:
        lock.close()
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise VitquantError(f"study {cfg.study!r} exists and minimizes; use another --study.")
    if saved is not None and saved != identity:
        diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise VitquantError(
            f"study {cfg.study!r} in {redact(cfg.storage)} was created with other settings "
            f"({', '.join(diff)} differ: {[saved.get(k) for k in diff]} there). Repeat the "
            "original options to resume it, or pass another --study name."
        )
    return study


def trial_sampler(cfg: SearchConfig, trial_number: int):
    """A TPE sampler seeded with ``seed + trial number``: parallel workers draw apart."""
    import optuna

    startup = max(2, min(10, cfg.trials // 3))
    return optuna.samplers.TPESampler(
        seed=cfg.seed * 1_000_003 + trial_number, n_startup_trials=startup
    )
