"""The final rule on hand-built rows, and the flow nodes read off decisions (no model, no data)."""

from __future__ import annotations

import pytest

from vitquant.errors import VitquantError
from vitquant.pipeline import Decision, choose_final, flow_nodes, val_drop_pts
from vitquant.results import ResultRow

FP32_VAL = 0.90


def _row(variant, val_drop, latency, size, *, spread=0.0, int8=10, simulated=False, backend="x"):
    return ResultRow(
        variant=variant,
        backend=backend,
        accuracy=0.9,
        val_accuracy=FP32_VAL - val_drop / 100,
        size_mb=size,
        latency_ms_per_image=latency,
        latency_spread_ms=spread,
        int8_layers=int8,
        simulated=simulated,
    )


def _fp32():
    return _row("fp32", 0.0, 2.0, 10.0, spread=0.1, int8=0, backend="pytorch")


def test_val_drop_is_against_the_fp32_val_accuracy():
    assert val_drop_pts(_row("a", 0.37, 1.0, 1.0), _fp32()) == pytest.approx(0.37)


def test_a_clear_speed_lead_wins():
    fast = _row("fast", 0.2, 0.50, 3.0, spread=0.02)
    slow = _row("slow", 0.1, 0.80, 1.0, spread=0.03)  # smaller, but 0.30 ms behind > 0.05
    choice = choose_final([_fp32(), slow, fast], max_drop=0.5)
    assert choice.row is fast and choice.rule == "speed"
    assert "fast (x)" in choice.reason and "speed decided" in choice.reason


def test_a_lead_within_the_summed_spreads_is_a_tie_and_the_smaller_file_wins():
    fast = _row("fast", 0.2, 0.50, 3.0, spread=0.05)
    close = _row("close", 0.1, 0.54, 2.0, spread=0.05)  # 0.04 ms behind <= 0.10 summed IQR
    far = _row("far", 0.0, 0.90, 0.5, spread=0.05)  # smallest, but clearly slower: not tied
    choice = choose_final([_fp32(), fast, close, far], max_drop=0.5)
    assert choice.row is close and choice.rule == "size"
    assert "within their summed latency spreads" in choice.reason
    assert "smaller file decided: close (x)" in choice.reason


def test_equal_files_tied_on_speed_go_to_more_int8_layers():
    a = _row("a", 0.2, 0.50, 2.0, spread=0.05, int8=8)
    b = _row("b", 0.2, 0.52, 2.0, spread=0.05, int8=12)
    choice = choose_final([_fp32(), a, b], max_drop=0.5)
    assert choice.row is b and choice.rule == "int8-layers"


def test_a_simulated_row_never_wins_on_speed_or_size():
    emulated = _row("emulated", 0.0, 0.10, 0.5, simulated=True)  # fastest and smallest
    real = _row("real", 0.3, 0.60, 2.0)
    choice = choose_final([_fp32(), emulated, real], max_drop=0.5)
    assert choice.row is real and choice.rule == "only"
    assert "1 simulated row(s) set aside" in choice.reason


def test_a_simulated_row_is_chosen_only_when_nothing_executed_meets_the_budget():
    emulated = _row("emulated", 0.4, 0.10, 0.5, simulated=True)
    emulated_better = _row("emulated2", 0.1, 0.90, 3.0, simulated=True)
    real = _row("real", 2.0, 0.60, 2.0)  # executed, but over the budget
    choice = choose_final([_fp32(), real, emulated, emulated_better], max_drop=0.5)
    assert choice.row is emulated_better and choice.rule == "simulated-only"
    assert "only simulated variants" in choice.reason and "emulated2 (x)" in choice.reason


def test_nothing_within_budget_takes_the_most_accurate_on_val():
    a, b = _row("a", 2.0, 0.1, 1.0), _row("b", 1.2, 0.9, 3.0)
    choice = choose_final([_fp32(), a, b], max_drop=0.5)
    assert choice.row is b and choice.rule == "most-accurate"
    assert "no int8 variant is within the 0.5 pt val budget" in choice.reason
    sim = _row("sim", 0.8, 0.5, 1.0, simulated=True)
    choice = choose_final([_fp32(), a, b, sim], max_drop=0.5)
    assert choice.row is sim and "simulated row" in choice.reason


def test_the_fp32_row_is_never_chosen_and_is_required():
    with pytest.raises(VitquantError, match="fp32 PyTorch row"):
        choose_final([_row("a", 0.0, 1.0, 1.0)], max_drop=1.0)
    with pytest.raises(VitquantError, match="no int8 variant"):
        choose_final([_fp32()], max_drop=1.0)


def test_flow_nodes_are_read_off_the_decisions():
    decisions = [
        Decision("fp32", "measured the float model", "reference", "info", {"val_acc": 0.9}),
        Decision("static-ignore", "skipped", "no layer has significant outliers", "skip"),
        Decision(
            "static",
            "quantized every layer to int8",
            "val drop 0.20 pts",
            "ok",
            {"val_acc": 0.898, "val_drop_pts": 0.2, "size_mb": 1.5, "latency_ms": 0.25},
        ),
        Decision(
            "final",
            "chose static (pt2e-x86)",
            "...",
            "final",
            {"variant": "static", "backend": "pt2e-x86", "val_acc": 0.898, "val_drop_pts": 0.2},
        ),
    ]
    nodes = flow_nodes(decisions)
    assert [n["status"] for n in nodes] == ["info", "skip", "ok", "final"]
    assert nodes[0]["detail"] == "val 0.9000"
    assert nodes[1]["detail"] == "skipped: no layer has significant outliers"
    assert nodes[2] == {
        "label": "static PTQ, all layers",
        "status": "ok",
        "detail": "val drop 0.20 pts | 1.50 MiB | 0.25 ms/img",
    }
    assert nodes[3]["label"] == "final: static (pt2e-x86)"
    with pytest.raises(ValueError, match="status"):
        Decision("x", "y", "z", "maybe")
