"""Training: kept weights are the best-validation epoch's; an interrupted run resumes exactly."""

from __future__ import annotations

import pytest
import torch

import vitquant.train as train_mod
from vitquant.data import load_data
from vitquant.evaluate import accuracy
from vitquant.registry import load_model
from vitquant.train import TrainConfig, train

CFG = TrainConfig(epochs=3, lr=0.05, batch_size=64, augment=False, train_limit=256)


def _fresh():
    torch.manual_seed(0)
    return load_model("digits_cnn", random_weights=True)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    bundle = load_data("digits", val=100, calib=0)
    ref = _fresh()
    ref_state = train(ref.model, ref.spec, bundle, CFG, checkpoint=tmp_path / "ref.pt", log=print)

    real_epoch = train_mod.train_epoch
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", crash_on_second)
    run = _fresh()
    with pytest.raises(KeyboardInterrupt):
        train(run.model, run.spec, bundle, CFG, checkpoint=tmp_path / "run.pt", log=print)
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)

    resumed = _fresh()  # a new process would start from scratch weights, then load the state
    state = train(
        resumed.model, resumed.spec, bundle, CFG, checkpoint=tmp_path / "run.pt", log=print
    )
    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    assert state.best_epoch == ref_state.best_epoch
    for key, value in ref.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_kept_weights_are_the_best_validation_epoch(tmp_path):
    bundle = load_data("digits", val=100, calib=0)
    run = _fresh()
    state = train(run.model, run.spec, bundle, CFG, checkpoint=tmp_path / "w.pt", log=print)
    best = max(state.history, key=lambda h: h["val_acc"])
    assert state.best_epoch == best["epoch"]
    # the model returned (and the checkpoint) scores the best epoch's validation accuracy
    assert accuracy(run.model, bundle, "val", run.spec) == pytest.approx(best["val_acc"])
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())


def test_a_changed_recipe_is_not_resumed_silently(tmp_path):
    bundle = load_data("digits", val=100, calib=0)
    run = _fresh()
    train(run.model, run.spec, bundle, CFG, checkpoint=tmp_path / "w.pt", log=print)
    from vitquant.errors import VitquantError

    with pytest.raises(VitquantError, match="--restart"):
        other = TrainConfig(**{**CFG.__dict__, "lr": 0.01})
        train(run.model, run.spec, bundle, other, checkpoint=tmp_path / "w.pt", log=print)
