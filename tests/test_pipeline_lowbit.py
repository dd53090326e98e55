"""The pipeline with a low-bit target: min-max loses, the ViT-aware methods run before the ignore
list, every decision is recorded, the report tells the story."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def run(digits_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("lowbit-pipeline") / "run"
    args = [
        sys.executable, "-m", "vitquant", "pipeline", "digits_vit", "--data", "digits",
        "--wbits", "2", "--abits", "4", "--quantize-attention", "--vit-methods", "gptq",
        "--max-drop", "0.5", "--calib", "64", "--val", "150", "--limit", "150",
        "--stats-images", "64", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "pipeline.json").read_text())


def test_methods_run_before_ignore_lists_and_decisions_are_recorded(run):
    _, doc = run
    steps = [d["step"] for d in doc["decisions"]]
    assert steps.index("static") < steps.index("vit-methods") < steps.index("static-ignore")
    by_step = {d["step"]: d for d in doc["decisions"]}
    val = {v["variant"]: v["val_drop_pts"] for v in doc["val"]}
    # min-max W2A4 with quantized attention loses more than the budget on val ...
    assert val["W2A4-attn-minmax"] > 0.5 and by_step["static"]["status"] == "miss"
    # ... so the methods run, and the step records the recipe and the drop before/after
    assert by_step["vit-methods"]["decision"].startswith("recipe: gptq")
    assert (
        f"{val['W2A4-attn-minmax']:.2f} -> {val['W2A4-attn-vit']:.2f}"
        in (by_step["vit-methods"]["reason"])
    )
    for step in ("static-auto", "dynamic", "qat"):
        assert by_step[step]["status"] == "skip"
    # QAT trains uniform Linear/Conv fake quantizers: not this target's quantized attention
    assert "--quantize-attention" in by_step["qat"]["reason"]
    # every low-bit row is simulated and never timed; the choice says so
    rows = [r for r in doc["results"] if r["variant"] != "fp32"]
    assert rows and all(r["simulated"] and r["latency_ms_per_image"] is None for r in rows)
    assert doc["final_rule"] in ("simulated-only", "most-accurate")
    best = min(val[r["variant"]] for r in rows)
    assert val[doc["final"]["variant"]] == best


def test_the_static_step_records_where_the_loss_comes_from(run):
    _, doc = run
    static = next(s for s in doc["steps"] if s.get("point_errors"))
    table = static["point_errors"]["minmax"]
    assert {"norm", "act", "softmax", "qkv"} <= {p["kind"] for p in table["points"]}
    assert all(p["impact_pts"] is not None for p in table["points"])
    n = len(table["points"])
    assert table["correlation"]["outlier_pct_vs_error"]["n"] == n


def test_report_tells_the_low_bit_story(run):
    out, doc = run
    from vitquant.report.html import build_report

    html_path, _ = build_report(out)
    html = html_path.read_text()
    assert "Where the ViT loses accuracy at low bits" in html
    assert "W2A4-attn-minmax" in html and "What recovered it" in html
    worst = min(
        next(s for s in doc["steps"] if s.get("point_errors"))["point_errors"]["minmax"]["points"],
        key=lambda p: p["sqnr_db"],
    )
    assert worst["point"] in html
