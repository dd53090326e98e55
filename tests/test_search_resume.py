"""A search SIGKILLed during a trial resumes: finished trials kept, the killed one FAIL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from vitquant.data import load_data
from vitquant.evaluate import accuracy
from vitquant.quant.artifacts import load_pt2e
from vitquant.quant.search import sqlite_url
from vitquant.registry import get_spec

TRIALS = 3


def _initialised(db: Path) -> bool:
    """Whether the search has finished creating its SQLite storage (read-only peek).

    Optuna's ``load_study`` initialises a storage it opens; doing that while the search is still
    creating it races on the schema-version row (a UNIQUE error in the search), so the test
    only reads once that row exists.
    """
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:  # the table is not there yet
        return False


def _wait_for_running_trial(storage: str, proc: subprocess.Popen, timeout: float = 400):
    """Poll the study until one trial is COMPLETE and a later one RUNNING (worker recorded)."""
    db = Path(storage.removeprefix("sqlite:///"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        if not _initialised(db):
            time.sleep(0.1)
            continue
        try:
            trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
        except Exception:  # the database or the study does not exist yet
            trials = []
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        if done and running:
            return running[0].number
        time.sleep(0.1)
    raise AssertionError("the search never had a COMPLETE and a RUNNING trial at once")


def test_killed_search_resumes_with_exactly_n_complete_trials(tmp_path, digits_models):
    out = tmp_path / "search"
    storage = sqlite_url(out / "search.db")
    cmd = [
        sys.executable,
        "-m",
        "vitquant",
        "search",
        "digits_vit",
        "--trials",
        str(TRIALS),
        "--epochs",
        "2",
        "--train-limit",
        "192",
        "--calib",
        "64",
        "--study",
        "resume",
        "--no-prune",
        "--no-latency",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "VITQUANT_QUIET": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        killed = _wait_for_running_trial(storage, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = optuna.load_study(study_name="resume", storage=storage).get_trials()
    kept = {
        t.number: (t.params, t.value, t.intermediate_values, t.datetime_complete)
        for t in before
        if t.state == TrialState.COMPLETE
    }
    assert kept and killed not in kept
    assert not (out / "search.json").exists()  # it died before writing

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == TRIALS
    assert states.count(TrialState.FAIL) == 1 and len(trials) == TRIALS + 1
    assert trials[killed].state == TrialState.FAIL
    for t in trials:  # the trials finished before the kill are untouched
        if t.number in kept:
            assert (t.params, t.value, t.intermediate_values, t.datetime_complete) == kept[t.number]

    result = json.loads((out / "search.json").read_text())
    assert result["worker"]["failed_stale"] == [killed]
    assert result["counts"] == {"COMPLETE": TRIALS, "FAIL": 1}
    complete = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t["value"])
    assert result["best"]["number"] == best["number"]
    # The best parameters were retrained and tested; the saved artifact gives that accuracy.
    final = result["final"]
    assert final["trial"] == best["number"]
    assert final["config"]["lr"] == best["params"]["lr"]
    bundle = load_data("digits", calib=64)
    saved = load_pt2e(final["artifacts"]["pt2"])
    assert accuracy(saved, bundle, "test", get_spec("digits_vit")) == final["test_acc"]
    assert set(result["plots"]) >= {"optimization_history", "trial_epochs"}
