"""The rest of the Python API: registry models and named data (the command line's document),
sensitivity, QAT, the Optuna search, the pipeline, compare and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import vitquant as vq
from test_api import digits, tiny  # noqa: F401  (module-scoped fixtures, reused)


@pytest.fixture(scope="module")
def roles(digits):  # noqa: F811
    x, y = digits

    def loader(a: int, b: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=64, shuffle=shuffle)

    return {
        "train": loader(0, 512, shuffle=True),
        "calibration": loader(1000, 1128),
        "val": loader(1128, 1256),
        "test": loader(1256, 1512),
    }


def test_registry_model_on_named_data_gives_the_commands_document(tmp_path, digits_models):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["analyze", "digits_cnn", "--calib", "64", "--no-plots", "--out", str(tmp_path)]
    subprocess.run([sys.executable, "-m", "vitquant", *args], check=True, env=env, timeout=300)
    cli = json.loads((tmp_path / "analyze.json").read_text())
    model = vq.load_model("digits_cnn")
    assert isinstance(model, torch.nn.Module)
    api = vq.analyze(model, data=vq.load_data("digits", calib=64)).to_dict()
    assert set(cli) - {"command", "files"} == set(api)
    for key in ("model", "checkpoint", "family", "data", "n_calib", "n_images", "layers"):
        assert api[key] == cli[key], key
    for key in ("weights", "summary", "top_outliers", "significant_modules"):
        assert api[key] == cli[key], key


def test_a_module_on_named_data_and_on_mixed_roles(tiny, roles):  # noqa: F811
    named = vq.evaluate(tiny, data="digits", latency_batches=())
    bundle = vq.load_data("digits")
    assert named.row.n == len(bundle.test_idx) and named.to_dict()["data"] == "digits"
    assert named.accuracy > 0.8  # digits' own preprocessing is close to the test's
    mixed = vq.quantize(
        tiny, vq.StaticPTQ(observer="minmax"), data="digits", test=roles["test"], measure=True
    )
    doc = mixed.to_dict()
    assert doc["n_test"] == 256 and doc["n_calib"] == 256  # calibration from digits
    assert doc["data"] == "digits + user batches (test)"


def test_sensitivity_ranks_every_layer_on_val(tiny, roles):  # noqa: F811
    result = vq.sensitivity(tiny, calibration=roles["calibration"], val=roles["val"])
    assert sorted(result.ranking) == ["fc1", "fc2", "head", "patch"]
    rows = result.layers
    assert [r.rank for r in rows] == [1, 2, 3, 4]
    assert all(a.only_kl >= b.only_kl for a, b in zip(rows, rows[1:], strict=False))
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["role"] == "val" and doc["n_val"] == 128 and len(doc["layers"]) == 4


def test_qat_keeps_the_best_val_epoch_and_exports(tiny, roles, tmp_path):  # noqa: F811
    run = vq.qat(
        tiny,
        vq.QATConfig(epochs=1, backend="xnnpack", lr=1e-3),
        ignore=["head"],
        **roles,
    )
    history = run.result.history
    assert [h["epoch"] for h in history] == [0, 1]
    best = max(history, key=lambda h: h["int8_val_acc"])
    assert run.result.best_epoch == best["epoch"]
    q = run.quantized
    assert q.float_layers == ["head"] and q.variant == "qat"
    fp32, row = run.rows
    assert (row.variant, row.backend, row.n) == ("qat", "pt2e-xnnpack", 256)
    doc = json.loads(json.dumps(run.to_dict()))
    assert doc["test_acc"] == row.accuracy and doc["best_epoch"] == run.result.best_epoch
    runner = vq.load_artifact(q.export(tmp_path / "qat.pte"))
    ev = vq.evaluate(runner, reference=q, test=roles["test"], latency_batches=())
    assert ev.row.agreement_pt2e >= 0.99


def test_search_runs_its_trials_and_resumes(tiny, roles, tmp_path):  # noqa: F811
    kw = dict(qat=vq.QATConfig(epochs=1), out=tmp_path, **roles)
    first = vq.search(tiny, trials=2, final=False, **kw)
    assert first.payload["counts"] == {"COMPLETE": 2} and first.final is None
    again = vq.search(tiny, trials=3, **kw)  # the same study: only the missing trial runs
    assert again.payload["worker"]["ran"] == [2] and again.payload["counts"] == {"COMPLETE": 3}
    assert again.final.rows[-1].variant == "qat"
    assert json.loads(json.dumps(again.to_dict()))["final"]["trial"] in (0, 1, 2)


def test_pipeline_compare_and_report(tiny, roles, tmp_path):  # noqa: F811
    cfg = vq.PipelineConfig(max_drop=0.5, lower=False, qat=False, stats_images=64)
    run = vq.pipeline(
        tiny,
        cfg,
        out=tmp_path / "pipeline",
        calibration=roles["calibration"],
        val=roles["val"],
        test=roles["test"],
    )
    variants = [r["variant"] for r in run.to_dict()["results"]]
    assert variants[0] == "fp32" and "static" in variants and "dynamic" in variants
    assert run.final is not None and run.run.decisions[-1].step == "final"
    both = vq.compare(
        {"tiny": tiny, "cnn": vq.load_model("digits_cnn")}, data="digits", stats_images=64
    )
    assert [p.model for p in both.profiles] == ["tiny", "cnn"]
    assert [p.family for p in both.profiles] == ["vit", "cnn"]
    assert set(both.profiles[0].drops) == {"static-per-tensor", "static-per-channel", "dynamic"}
    report = vq.report(tmp_path / "report", results=[run, both])
    assert report.path.is_file()
    assert sorted(report.to_dict()["result_files"]) == [
        "compare/compare.json",
        "pipeline/pipeline.json",
    ]
