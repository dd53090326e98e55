"""The one QAT search objective: what it reports to the pruner, what it returns, pruning."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from vitquant.data import load_data
from vitquant.quant.qat import QATConfig
from vitquant.quant.search import (
    FIRST_REPORTED_EPOCH,
    QATObjective,
    SearchConfig,
    SearchSpace,
    open_study,
    run_search,
    sqlite_url,
)
from vitquant.registry import load_model

BASE = QATConfig(epochs=2, lr=0.01, batch_size=32, train_limit=128, calib=64, augment=False)


@pytest.fixture(scope="module")
def objective(digits_models) -> QATObjective:
    loaded = load_model("digits_vit")
    bundle = load_data("digits", val=100, calib=64)
    return QATObjective(loaded.model, loaded.spec, bundle, BASE, keep_results=True)


def test_every_trained_epoch_is_reported_and_epoch_0_is_not(objective):
    reports = []
    params = {"lr": 0.02, "momentum": 0.85}
    value, attrs = objective(params, lambda step, v: reports.append((step, v)))
    result = objective.result(params)
    assert result is not None and objective.config(params).lr == 0.02
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # Steps are epoch numbers 1..E, values the int8 val accuracies run_qat recorded.
    assert FIRST_REPORTED_EPOCH == 1
    assert reports == [(1, history[1]["int8_val_acc"]), (2, history[2]["int8_val_acc"])]
    # The value is the best epoch including epoch 0, which the pruner never saw.
    assert value == result.best_val == max(h["int8_val_acc"] for h in history)
    assert attrs == {"best_epoch": result.best_epoch, "history": history}


def test_a_pruned_report_stops_the_run_after_that_epoch(objective):
    reports = []

    def report(step, v):
        reports.append(step)
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        objective({"lr": 0.005}, report)
    assert reports == [1]  # epoch 2 never ran
    assert objective.result({"lr": 0.005}) is None  # a pruned run is not kept


def test_a_real_study_stores_the_reported_epochs(objective, tmp_path):
    cfg = SearchConfig(
        trials=1,
        study="objective",
        storage=sqlite_url(tmp_path / "s.db"),
        space=SearchSpace(lr=(1e-3, 3e-2)),
        prune=False,
        poll_seconds=0.05,
    )
    study = open_study(cfg, {"test": "objective"})
    worker = run_search(study, cfg, objective, log=lambda s: None)
    trials = study.get_trials()
    assert worker.ran == [0] and [t.state for t in trials] == [TrialState.COMPLETE]
    (t,) = trials
    history = objective.result(t.params).history
    assert t.user_attrs["history"] == history
    assert t.intermediate_values == {1: history[1]["int8_val_acc"], 2: history[2]["int8_val_acc"]}
    assert t.value == max(h["int8_val_acc"] for h in history)
