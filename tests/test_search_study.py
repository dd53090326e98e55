"""Search bookkeeping without training: resume checks, dead-worker detection, the exact count."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from vitquant.errors import VitquantError
from vitquant.quant.search import (
    SearchConfig,
    SearchSpace,
    fail_dead_trials,
    open_study,
    run_search,
    sqlite_url,
    summarize,
    worker_identity,
)

IDENTITY = {"model": "digits_vit", "data": "digits", "space": {"lr": [1e-5, 1e-2]}}


def _cfg(tmp_path, **kw) -> SearchConfig:
    base = dict(trials=3, study="s", storage=sqlite_url(tmp_path / "s.db"), poll_seconds=0.05)
    return SearchConfig(**{**base, **kw})


def test_a_study_created_for_other_settings_is_refused(tmp_path):
    open_study(_cfg(tmp_path), IDENTITY)
    open_study(_cfg(tmp_path), dict(IDENTITY))  # same settings: resumes
    with pytest.raises(VitquantError, match="model differ"):
        open_study(_cfg(tmp_path), {**IDENTITY, "model": "digits_cnn"})


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": (0.0, 1e-2)},
        {"weight_decay": (1e-2, 1e-3)},
        {"momentum": (0.5, 1.0)},
        {"epochs": (0, 3)},
    ],
)
def test_bad_search_ranges_are_user_errors(kw):
    with pytest.raises(VitquantError):
        SearchSpace(**kw)


def test_bad_storage_url_is_a_user_error(tmp_path):
    with pytest.raises(VitquantError, match="not a database URL"):
        _cfg(tmp_path, storage=str(tmp_path / "s.db"))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_running_trials_of_dead_local_workers_are_failed(tmp_path):
    study = open_study(_cfg(tmp_path), IDENTITY)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone, alive = study.ask(), study.ask()
    gone.set_user_attr("worker", {**worker_identity(), "pid": int(dead.stdout), "start": 1})
    alive.set_user_attr("worker", worker_identity())
    assert fail_dead_trials(study) == [gone.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {gone.number: TrialState.FAIL, alive.number: TrialState.RUNNING}


def test_search_reaches_exactly_the_target_and_resumes_without_rerunning(tmp_path):
    """A quadratic objective: the count is exact, and a second run only tops the study up."""
    calls = []

    def train_fn(params, report):
        calls.append(params)
        for epoch in (1, 2):
            report(epoch, -((params["lr"] - 1e-3) ** 2) * epoch)
        return -((params["lr"] - 1e-3) ** 2), {"best_epoch": 2}

    cfg = _cfg(tmp_path, trials=3, prune=False)
    study = open_study(cfg, IDENTITY)
    first = run_search(study, cfg, train_fn, log=lambda s: None)
    assert first.ran == [0, 1, 2] and len(calls) == 3
    before = {t.number: (t.params, t.value) for t in study.get_trials()}
    cfg5 = _cfg(tmp_path, trials=5, prune=False)
    again = run_search(open_study(cfg5, IDENTITY), cfg5, train_fn, log=lambda s: None)
    assert again.ran == [3, 4] and len(calls) == 5
    study = optuna.load_study(study_name="s", storage=cfg.storage)
    assert {t.number: (t.params, t.value) for t in study.get_trials()[:3]} == before
    summary = summarize(study)
    assert summary["counts"] == {"COMPLETE": 5}
    best = max(summary["trials"], key=lambda t: t["value"])
    assert summary["best"]["number"] == best["number"]
    # Each trial drew its own parameters from its own seed (no two workers repeat a draw).
    assert len({t["params"]["lr"] for t in summary["trials"]}) == 5
