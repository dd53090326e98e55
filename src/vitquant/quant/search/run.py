"""The search loop (``run_search``: this worker's share of the trials) and its summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

from vitquant.quant.search.config import FINISHED, SearchConfig, WorkerReport
from vitquant.quant.search.storage import trial_sampler
from vitquant.quant.search.urls import redact
from vitquant.quant.search.workers import StudyLock, fail_dead_trials, worker_identity

# train_fn(params, report) -> (value, user_attrs); report(epoch, value) may raise TrialPruned.
TrainFn = Callable[[dict, Callable[[int, float], None]], tuple[float, dict]]


def counts(study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def run_search(
    study,
    cfg: SearchConfig,
    train_fn: TrainFn,
    *,
    log: Callable[[str], None] = print,
) -> WorkerReport:
    """Run trials until the study holds ``cfg.trials`` finished ones (this worker's share).

    Several workers may run this on one study at once; the count is exact (see ``StudyLock``).
    A worker whose count is reached while other workers' trials still run waits for them, so
    when it returns the study is complete (or holds only trials of workers that died, marked
    FAIL once their heartbeat goes stale).
    """
    import optuna

    report = WorkerReport()
    lock = StudyLock(cfg.storage, cfg.study)

    def objective(trial) -> float:
        trial.set_user_attr("worker", worker_identity())
        lock.release()  # the trial is RUNNING in the storage: other workers count it now
        trial.study.sampler = trial_sampler(cfg, trial.number)
        params = cfg.space.suggest(trial)
        report.ran.append(trial.number)
        log(f"trial {trial.number}: {_fmt(params)}")
        t0 = time.perf_counter()

        def on_epoch(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if cfg.prune and trial.should_prune():
                log(f"trial {trial.number}: pruned after epoch {epoch} (val {value:.4f})")
                raise optuna.TrialPruned()

        value, attrs = train_fn(params, on_epoch)
        for key, val in attrs.items():
            trial.set_user_attr(key, val)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        log(f"trial {trial.number}: int8 val {value:.4f} ({time.perf_counter() - t0:.0f} s)")
        return value

    try:
        while True:
            with lock.holding():
                report.failed_stale += fail_dead_trials(study)
                n = counts(study)
                finished = sum(n.get(s, 0) for s in FINISHED)
                running = n.get("RUNNING", 0)
                if finished >= cfg.trials:
                    break
                start = finished + running < cfg.trials
                if start:
                    # The objective releases the lock once its trial exists (RUNNING).
                    study.optimize(objective, n_trials=1, gc_after_trial=True)
            if not start:
                time.sleep(cfg.poll_seconds)  # others run the last trials; wait for them
    finally:
        lock.close()
    return report


def _fmt(params: dict) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def summarize(study) -> dict:
    """Every trial (number, state, params, value, worker, per-epoch values) and the best one."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "worker": t.user_attrs.get("worker"),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "seconds": t.user_attrs.get("seconds"),
                "started": t.datetime_start.isoformat() if t.datetime_start else None,
                "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": dict(b.params)}
    return {"study": study.study_name, "counts": counts(study), "trials": trials, "best": best}


def config_dict(cfg: SearchConfig) -> dict:
    out = asdict(cfg)
    out["storage"] = redact(cfg.storage)
    return out
