"""Pipeline on digits: the QAT branch is exercised, decisions follow val, the final rule holds."""

from __future__ import annotations

import json

import pytest

from vitquant.layers import quantizable_names
from vitquant.registry import load_model
from vitquant.results import ResultRow


@pytest.fixture(scope="module")
def result(forced_qat_pipeline):
    return json.loads((forced_qat_pipeline / "pipeline" / "pipeline.json").read_text())


def test_the_qat_branch_runs_and_is_recorded(result):
    variants = [r["variant"] for r in result["results"]]
    assert variants[0] == "fp32" and variants[-1] == "qat"
    qat = next(d for d in result["decisions"] if d["step"] == "qat")
    assert qat["decision"].startswith("run QAT")
    qat_row = result["results"][-1]
    assert qat_row["extra"]["trials"]["COMPLETE"] == 2  # the Optuna study ran its trials
    assert qat_row["int8_layers"] == len(quantizable_names(load_model("digits_vit").model))
    assert all(d["reason"] for d in result["decisions"])


def test_every_row_is_measured_on_val_and_test_and_drops_use_fp32_val(result):
    fp32 = result["results"][0]
    assert fp32["variant"] == "fp32" and fp32["split"] == "test"
    assert len(result["val"]) == len(result["results"])
    for row, val in zip(result["results"], result["val"], strict=True):
        assert (val["variant"], val["backend"]) == (row["variant"], row["backend"])
        assert 0 < row["val_accuracy"] <= 1 and val["val_accuracy"] == row["val_accuracy"]
        expected = (fp32["val_accuracy"] - row["val_accuracy"]) * 100
        assert val["val_drop_pts"] == pytest.approx(expected, abs=1e-4)
        # reported drops are on test, against the fp32 test accuracy
        assert row["drop_pts"] == pytest.approx(
            (fp32["accuracy"] - row["accuracy"]) * 100, abs=1e-4
        )
        assert row["n"] == 360
        if row is not fp32:  # agreement with the fp32 row's test predictions
            assert 0 < row["agreement_fp32"] <= 1
        assert set(row["latency_ms_per_image_by_batch"]) == {"1", "32"}
        assert row["latency_spread_ms"] >= 0 and row["latency_batch"] == 1
    assert result["subsets"]["val"] == 150 and result["subsets"]["test"] == 360


def test_no_lower_rows_are_simulated_emulations(result):
    for row in result["results"]:
        pt2e = row["backend"].startswith("pt2e")
        assert row["simulated"] == pt2e  # --no-lower: pt2e graphs run as the eager emulation
        if pt2e:
            assert row["extra"]["accuracy_on"].startswith("eager emulation")
            assert row["artifact"].endswith(".pt2")


def test_each_step_has_one_decision_and_the_flow_is_read_off_them(result):
    steps = [d["step"] for d in result["decisions"]]
    assert steps == [
        "fp32",
        "analysis",
        "static",
        "vit-methods",  # skipped: an int8 target (the low-bit tests cover it running)
        "static-ignore",
        "static-auto",
        "dynamic",
        "qat",
        "final",
    ]
    assert [s["step"] for s in result["steps"]] == steps
    assert [n["status"] for n in result["flow"]] == [d["status"] for d in result["decisions"]]
    by_variant = {r["variant"]: r for r in result["results"]}
    for d in result["decisions"]:
        if d["status"] in ("ok", "miss"):  # a measured variant: its figures are its row's
            row = by_variant[d["detail"]["variant"]]
            assert d["detail"]["size_mb"] == row["size_mb"]
            assert (d["status"] == "ok") == (d["detail"]["val_drop_pts"] <= 0.0)
    assert result["flow"][-1]["label"] == (
        f"final: {result['final']['variant']} ({result['final']['backend']})"
    )


def test_ignore_lists_hold_only_quantizable_modules(result):
    names = set(quantizable_names(load_model("digits_vit").model))
    for row in result["results"]:
        assert set(row["ignored"]) <= names
        assert row["int8_layers"] + row["float_layers"] == len(names)


def test_final_choice_follows_the_documented_rule(result):
    from vitquant.pipeline import choose_final

    rows = [ResultRow(**r) for r in result["results"]]
    choice = choose_final(rows, max_drop=result["config"]["max_drop"])
    final = result["final"]
    assert (final["variant"], final["backend"]) == (choice.row.variant, choice.row.backend)
    assert result["final_rule"] == choice.rule and result["final_reason"] == choice.reason
    if final["simulated"]:  # emulated int8 only wins when nothing executed meets the budget
        assert choice.rule in ("simulated-only", "most-accurate")
