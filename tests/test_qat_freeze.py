"""QAT on digits_cnn: observer and BatchNorm freezing, the graph's train/eval flags, conversion."""

from __future__ import annotations

import copy

import pytest
import torch

from vitquant.data import load_data
from vitquant.quant.qat import (
    QATConfig,
    convert_copy,
    fake_quant_modules,
    prepare_qat,
    run_qat,
    set_graph_mode,
)
from vitquant.registry import load_model


def _snapshot(prepared) -> dict:
    state = prepared.state_dict()
    stats = ("running_mean", "running_var")
    return {
        "bn": {k: v.clone() for k, v in state.items() if k.endswith(stats)},
        "scales": {n: m.scale.clone() for n, m in fake_quant_modules(prepared).items()},
        "zero_points": {n: m.zero_point.clone() for n, m in fake_quant_modules(prepared).items()},
        "weights": {k: v.clone() for k, v in state.items() if k.endswith("conv2.weight")},
    }


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def frozen_run(digits_models):
    bundle = load_data("digits", val=100, calib=64)
    loaded = load_model("digits_cnn")
    cfg = QATConfig(
        epochs=3,
        lr=0.02,
        batch_size=32,
        train_limit=256,
        augment=False,
        freeze_observers_after=1,
        freeze_bn_after=2,
    )
    snaps = {}
    result = run_qat(
        loaded.model,
        loaded.spec,
        bundle,
        cfg,
        log=lambda s: None,
        on_epoch=lambda e, rec, m: snaps.__setitem__(e, _snapshot(m)),
    )
    return result, snaps


def test_observers_freeze_after_e1(frozen_run):
    result, snaps = frozen_run
    # Epoch 1 still observes (scales move), then every scale and zero point stays put.
    assert not _same(snaps[0]["scales"], snaps[1]["scales"])
    for e in (2, 3):
        assert _same(snaps[1]["scales"], snaps[e]["scales"])
        assert _same(snaps[1]["zero_points"], snaps[e]["zero_points"])
    assert [h["observers_frozen"] for h in result.history] == [False, False, True, True]


def test_batchnorm_statistics_freeze_after_e2(frozen_run):
    result, snaps = frozen_run
    assert len(snaps[0]["bn"]) == 6  # three BatchNorms: mean and var each
    assert not _same(snaps[1]["bn"], snaps[2]["bn"])  # epoch 2 still updates them
    assert _same(snaps[2]["bn"], snaps[3]["bn"])  # epoch 3 does not
    assert [h["bn_frozen"] for h in result.history] == [False, False, False, True]
    # The weights keep learning while both are frozen.
    assert not _same(snaps[2]["weights"], snaps[3]["weights"])


def test_kept_epoch_is_the_best_int8_validation_epoch(frozen_run):
    result, _ = frozen_run
    vals = [h["int8_val_acc"] for h in result.history]
    assert result.best_epoch == vals.index(max(vals)) and result.best_val == max(vals)
    # The kept model converts to the accuracy its epoch reported.
    bundle = load_data("digits", val=100, calib=64)
    from vitquant.evaluate import accuracy

    assert accuracy(
        result.converted, bundle, "val", load_model("digits_cnn").spec
    ) == pytest.approx(result.best_val, abs=1e-9)


def test_cached_pattern_conversion_matches_torchao(digits_models):
    """``convert_copy`` memoises torchao's pattern export; the result must be identical."""
    from torchao.quantization.pt2e import disable_observer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    bundle = load_data("digits", val=100, calib=64)
    loaded = load_model("digits_cnn")
    x, _ = next(bundle.batches("val", loaded.spec, batch_size=64))
    prepared = prepare_qat(loaded.model, x[:2], QATConfig())
    prepared(x)  # one training-mode step of observation
    reference = copy.deepcopy(prepared)
    set_graph_mode(reference, training=False)
    reference.apply(disable_observer)
    reference = convert_pt2e(reference)  # torchao, uncached
    with torch.no_grad():
        assert torch.equal(convert_copy(prepared)(x), reference(x))
        assert torch.equal(convert_copy(prepared)(x), reference(x))


def test_train_mode_keeps_dropout_probabilities(digits_models):
    """torchao's move_exported_model_to_train sets every dropout to p=0.5; ours keeps p."""
    loaded = load_model("digits_vit")
    x = torch.randn(4, 1, 8, 8)
    prepared = prepare_qat(loaded.model, x, QATConfig())
    drops = [n for n in prepared.graph.nodes if "dropout" in str(n.target)]
    assert drops and all(n.args[1] == 0.0 and n.args[2] is True for n in drops)
    set_graph_mode(prepared, training=False)
    assert all(n.args[1] == 0.0 and n.args[2] is False for n in drops)


def test_bad_recipes_are_user_errors():
    from vitquant.errors import VitquantError

    for kw in (
        {"epochs": 0},
        {"lr": 0},
        {"momentum": 1.0},
        {"freeze_bn_after": -1},
        {"optimizer": "adam"},
        {"train_limit": 0},
    ):
        with pytest.raises(VitquantError):
            QATConfig(**kw)
