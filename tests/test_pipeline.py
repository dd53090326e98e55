"""Pipeline on digits: the QAT branch is exercised, decisions follow val, the final rule holds."""

from __future__ import annotations

import json

import pytest

from vitquant.layers import quantizable_names
from vitquant.pipeline import Variant, choose_final
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


def test_val_drops_are_measured_against_fp32_val(result):
    fp32 = result["results"][0]
    for row in result["results"]:
        val = result["val"][row["variant"]]
        assert val["val_acc"] == row["extra"]["val_acc"]
        expected = (fp32["extra"]["val_acc"] - val["val_acc"]) * 100
        assert val["val_drop_pts"] == pytest.approx(expected)
        # reported drops are on test, against the fp32 test accuracy
        assert row["drop_pts"] == pytest.approx(
            (fp32["accuracy"] - row["accuracy"]) * 100, abs=1e-4
        )
    assert result["subsets"]["val"] == 150 and result["subsets"]["test"] == 360


def test_ignore_lists_hold_only_quantizable_modules(result):
    names = set(quantizable_names(load_model("digits_vit").model))
    for row in result["results"]:
        assert set(row["ignored"]) <= names
        assert row["int8_layers"] + row["float_layers"] == len(names)


def test_final_choice_follows_the_documented_rule(result):
    rows = [r for r in result["results"] if r["variant"] != "fp32"]
    drop = {r["variant"]: result["val"][r["variant"]]["val_drop_pts"] for r in rows}
    within = [r for r in rows if drop[r["variant"]] <= 0.0]
    if within:
        expected = min(within, key=lambda r: (r["latency_ms_per_image"], r["size_mb"]))
    else:
        expected = min(rows, key=lambda r: drop[r["variant"]])
    assert result["final"]["variant"] == expected["variant"]


def _variant(name, val_drop, latency, size):
    row = ResultRow(
        variant=name, backend="x", accuracy=0.9, n=10, size_mb=size, latency_ms_per_image=latency
    )
    return Variant(row=row, val_acc=0.9 - val_drop / 100, val_drop_pts=val_drop)


def test_choose_final_prefers_fastest_within_budget_else_most_accurate():
    fp32 = _variant("fp32", 0.0, 1.0, 10)
    a, b, c = _variant("a", 0.4, 0.5, 3), _variant("b", 0.2, 0.3, 3), _variant("c", 2.0, 0.1, 1)
    assert choose_final([fp32, a, b, c], max_drop=0.5)[0] is b
    assert choose_final([fp32, a, b, c], max_drop=0.1)[0] is b  # none within: most accurate
    assert choose_final([fp32, a, c], max_drop=0.1)[0] is a
