"""Two worker processes share one Optuna study on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pg import postgres_server
from vitquant.quant.search import driver_url

TRIALS = 6


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


def _search_cmd(url: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vitquant",
        "search",
        "digits_vit",
        "--trials",
        str(TRIALS),
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "--calib",
        "64",
        "--storage",
        url,
        "--study",
        "shared",
        "--no-final",
        "--no-prune",
        "--threads",
        "1",
        "--out",
        str(out),
    ]


def test_two_workers_fill_one_postgresql_study_exactly_once(tmp_path, pg_url, digits_models):
    env = {**os.environ, "VITQUANT_QUIET": "1"}
    procs = [
        subprocess.Popen(
            _search_cmd(pg_url, tmp_path / f"w{i}"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]

    study = optuna.load_study(study_name="shared", storage=driver_url(pg_url))
    trials = study.get_trials()
    # Every trial landed once: consecutive numbers, all COMPLETE, exactly the target.
    assert [t.number for t in trials] == list(range(TRIALS))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # ... and each was run by exactly one of the two workers, as the workers themselves report.
    ran = [
        json.loads((tmp_path / f"w{i}" / "search.json").read_text())["worker"]["ran"]
        for i in range(2)
    ]
    assert sorted(ran[0] + ran[1]) == list(range(TRIALS))
    assert not set(ran[0]) & set(ran[1])
    # Both workers' process ids appear on the trials they ran.
    pids = {t.number: t.user_attrs["worker"]["pid"] for t in trials}
    assert set(pids.values()) == {p.pid for p in procs}
    for i, p in enumerate(procs):
        assert {n for n, pid in pids.items() if pid == p.pid} == set(ran[i])
    # The objective is the best per-epoch int8 val accuracy the trial recorded.
    for t in trials:
        history = t.user_attrs["history"]
        assert t.value == max(h["int8_val_acc"] for h in history)
        assert t.intermediate_values == {1: history[1]["int8_val_acc"]}
