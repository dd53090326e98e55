"""`vitquant analyze` and `vitquant sensitivity`: files written, numbers equal to references."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vitquant.analysis.hooks import observation_points, observe
from vitquant.data import load_data
from vitquant.registry import load_model


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitquant", *args], capture_output=True, text=True, timeout=600
    )


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory, digits_models):
    out = tmp_path_factory.mktemp("an") / "digits_vit"
    proc = run(
        "analyze",
        "digits_vit",
        "--data",
        "digits",
        "--calib",
        "80",
        "--batch-size",
        "32",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_analyze_json_matches_numpy(analyzed):
    out, proc = analyzed
    result = json.loads((out / "analyze.json").read_text())
    assert result["n_images"] == 80 and result["threshold_pct"] == 5.0
    # Independent reference: raw outputs of the same 80 calibration images, exact NumPy.
    loaded = load_model("digits_vit")
    bundle = load_data("digits", calib=80)
    example, _ = next(bundle.batches("calib", loaded.spec, batch_size=2))
    points = observation_points(loaded.model, example, family="vit")
    raw: dict[str, list] = {}
    with (
        torch.no_grad(),
        observe(
            loaded.model,
            points,
            lambda p, o: raw.setdefault(p.point, []).append(o.numpy().ravel().copy()),
        ),
    ):
        for x, _ in bundle.batches("calib", loaded.spec, batch_size=32):
            loaded.model(x)
    assert [r["point"] for r in result["layers"]] == [p.point for p in points]
    for row in result["layers"]:
        a = np.concatenate(raw[row["point"]]).astype(np.float64)
        q1, q3 = np.percentile(a, [25, 75])
        pct = 100 * np.mean((a < q1 - 1.5 * (q3 - q1)) | (a > q3 + 1.5 * (q3 - q1)))
        assert abs(row["outlier_pct"] - pct) < 0.1, row["point"]
        assert (row["q1"], row["q3"]) == pytest.approx((q1, q3))
        assert (row["min"], row["max"]) == (a.min(), a.max())
        assert row["significant"] == (pct > 5.0)
        for key in ("name", "kind", "module", "lower_fence", "upper_fence"):
            assert key in row
    by_point = {r["point"]: r for r in result["layers"]}
    assert by_point["blocks.0.mlp.act"]["name"] == "blocks.0.mlp.fc2"
    # Weights: change score by the study's formula, per module.
    params = dict(loaded.model.named_parameters())
    for w in result["weights"]:
        orig = params[f"{w['name']}.weight"].detach().numpy()
        scale = np.max(np.abs(orig)) / 127
        q = np.clip(np.round(orig / scale), -127, 127) * scale
        c = abs(q.mean() - orig.mean()) / orig.mean() + abs(q.std() - orig.std()) / orig.std()
        assert w["change_score"] == pytest.approx(float(c), rel=1e-6)
    # Summaries count every point once.
    kinds = result["summary"]["activations"]["by_kind"]
    assert sum(k["count"] for k in kinds) == len(result["layers"])
    assert {k["kind"] for k in kinds} >= {"qkv", "proj", "fc1", "fc2", "norm", "act", "softmax"}
    blocks = result["summary"]["activations"]["by_block"]
    assert [b["block"] for b in blocks] == [0, 1, 2, None]
    top = sorted(result["layers"], key=lambda r: -r["outlier_pct"])[0]
    assert result["top_outliers"][0] == top["point"]
    assert top["point"] in proc.stdout  # the rich table shows it


def test_analyze_csv_and_figures(analyzed):
    out, _ = analyzed
    result = json.loads((out / "analyze.json").read_text())
    with open(out / "analyze_layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == [r["point"] for r in result["layers"]]
    assert float(rows[3]["outlier_pct"]) == pytest.approx(result["layers"][3]["outlier_pct"])
    with open(out / "analyze_weights.csv") as f:
        assert len(list(csv.DictReader(f))) == len(result["weights"]) == 14
    for name in result["figures"].values():
        width, height = _png_size(out / name)
        assert width > 400 and height > 200, name
    assert set(result["figures"]) == {
        "activation_boxplots",
        "weight_histograms",
        "outlier_pct",
        "change_score",
        "sqnr",
    }


def test_analyze_refuses_overwrite_and_bad_input(analyzed, tmp_path):
    out, _ = analyzed
    again = run("analyze", "digits_vit", "--calib", "8", "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    # In-process: the library raises VitquantError (main() turns it into exit code 2).
    from typer.testing import CliRunner

    from vitquant.cli import app
    from vitquant.errors import VitquantError

    res = CliRunner().invoke(app, ["analyze", "digits_vit", "--calib", "0", "--out", str(tmp_path)])
    assert isinstance(res.exception, VitquantError) and "--calib" in str(res.exception)
    # A percentage out of [0, 100] is refused by the option itself, as in compare and pipeline.
    res = CliRunner().invoke(
        app, ["analyze", "digits_vit", "--threshold", "120", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "Invalid value" in res.output and "--threshold" in res.output
    assert not (tmp_path / "analyze.json").exists()


def test_sensitivity_command(tmp_path, digits_models):
    out = tmp_path / "sens"
    proc = run(
        "sensitivity",
        "digits_cnn",
        "--data",
        "digits",
        "--val",
        "60",
        "--calib",
        "32",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "sensitivity.json").read_text())
    assert result["role"] == "val" and result["n_val"] == 60
    loaded = load_model("digits_cnn")
    bundle = load_data("digits", val=60, calib=32)
    with torch.no_grad():
        logits = torch.cat([loaded.model(x) for x, _ in bundle.batches("val", loaded.spec)])
    float_acc = (logits.argmax(1) == bundle.role("val").labels).float().mean().item()
    assert result["float_acc"] == pytest.approx(float_acc)
    layers = result["layers"]
    assert sorted(r["name"] for r in layers) == ["conv1", "conv2", "conv3", "fc"]
    assert [r["rank"] for r in layers] == [1, 2, 3, 4]
    assert [r["only_kl"] for r in layers] == sorted((r["only_kl"] for r in layers), reverse=True)
    assert (out / "sensitivity.csv").read_text().count("\n") == 5
    assert _png_size(out / "sensitivity.png")[0] > 400
