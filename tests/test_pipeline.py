"""Pipeline on digits: the QAT branch is exercised, decisions follow val, the final rule holds."""

from __future__ import annotations

import pytest

from vitquant.data import load_data
from vitquant.pipeline import PipelineConfig, Variant, choose_final, run_pipeline
from vitquant.pipeline_steps import analysis_step, qat_step
from vitquant.registry import load_model
from vitquant.results import ResultRow


@pytest.fixture(scope="module")
def forced_qat_run(tmp_path_factory, digits_models):
    loaded = load_model("digits_vit")
    bundle = load_data("digits", val=150, calib=128)
    cfg = PipelineConfig(max_drop=0.0, trials=2, qat_epochs=1, qat_train_limit=256,
                         force_qat=True, stats_images=128, lower=False)  # fmt: skip
    out = tmp_path_factory.mktemp("pipeline")
    run = run_pipeline(
        loaded.model, loaded.spec, bundle, cfg, out=out,
        analyze=analysis_step(loaded.model, loaded.spec, bundle, cfg, log=print),
        qat_search=qat_step("digits_vit", loaded, bundle, cfg, out, log=print), log=print,
    )  # fmt: skip
    return run, bundle, out


def test_the_qat_branch_runs_and_is_recorded(forced_qat_run):
    run, _, _ = forced_qat_run
    variants = [v.row.variant for v in run.variants]
    assert variants[0] == "fp32" and "qat" in variants
    qat = next(d for d in run.decisions if d["step"] == "qat")
    assert qat["decision"].startswith("run QAT")
    assert all(d["reason"] for d in run.decisions)


def test_val_drops_are_measured_against_fp32_val(forced_qat_run):
    run, _, _ = forced_qat_run
    fp32 = run.variants[0]
    for v in run.variants:
        assert v.val_drop_pts == pytest.approx((fp32.val_acc - v.val_acc) * 100)
        assert v.row.extra["val_acc"] == v.val_acc
        # reported drops are on test, against the fp32 test accuracy
        assert v.row.drop_pts == pytest.approx((fp32.row.accuracy - v.row.accuracy) * 100, abs=1e-4)


def test_ignore_lists_hold_only_quantizable_modules(forced_qat_run):
    from vitquant.layers import quantizable_names

    run, _, _ = forced_qat_run
    names = set(quantizable_names(load_model("digits_vit").model))
    for v in run.variants:
        assert set(v.row.ignored) <= names
        assert v.row.int8_layers + v.row.float_layers == len(names)


def test_final_choice_follows_the_documented_rule(forced_qat_run):
    run, _, _ = forced_qat_run
    quantized = [v for v in run.variants if v.row.variant != "fp32"]
    within = [v for v in quantized if v.val_drop_pts <= 0.0]
    if within:
        expected = min(within, key=lambda v: (v.row.latency_ms_per_image, v.row.size_mb))
    else:
        expected = max(quantized, key=lambda v: v.val_acc)
    assert run.final is expected


def _variant(name, val_drop, latency, size):
    row = ResultRow(variant=name, backend="x", accuracy=0.9, n=10, size_mb=size,
                    latency_ms_per_image=latency)  # fmt: skip
    return Variant(row=row, val_acc=0.9 - val_drop / 100, val_drop_pts=val_drop)


def test_choose_final_prefers_fastest_within_budget_else_most_accurate():
    fp32 = _variant("fp32", 0.0, 1.0, 10)
    a, b, c = _variant("a", 0.4, 0.5, 3), _variant("b", 0.2, 0.3, 3), _variant("c", 2.0, 0.1, 1)
    assert choose_final([fp32, a, b, c], max_drop=0.5)[0] is b
    assert choose_final([fp32, a, b, c], max_drop=0.1)[0] is b  # none within: most accurate
    assert choose_final([fp32, a, c], max_drop=0.1)[0] is a
