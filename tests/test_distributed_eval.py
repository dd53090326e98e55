"""`eval`, `analyze` and `sensitivity` under torchrun (2 gloo ranks) give one process's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vitquant.analysis.merges import chan_merge, merge_samples
from vitquant.analysis.sensitivity import per_layer_sensitivity
from vitquant.analysis.stats import collect_activation_stats
from vitquant.data import load_data
from vitquant.distributed import interleave
from vitquant.evaluate import accuracy
from vitquant.registry import load_model

WORKER = Path(__file__).with_name("dist_eval_worker.py")
CALIB, BATCH = 80, 32  # analyze: 80 images in batches of 32 -> 2 batches per rank
SENS_VAL, SENS_CALIB = 100, 64
SENS_LAYERS = ["blocks.0.attn.qkv", "blocks.2.mlp.fc2", "head"]


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory, digits_models) -> tuple[Path, str]:
    """One 2-rank job running the three commands; returns the output folder and the stdout."""
    out = tmp_path_factory.mktemp("dist")
    common = ["digits_vit", "--data", "digits"]
    commands = [
        ["eval", *common, "--out", str(out / "eval")],
        [
            "analyze",
            *common,
            "--calib",
            str(CALIB),
            "--batch-size",
            str(BATCH),
            "--no-plots",
            "--out",
            str(out / "analyze"),
        ],
        [
            "sensitivity",
            *common,
            "--val",
            str(SENS_VAL),
            "--calib",
            str(SENS_CALIB),
            "--layers",
            ",".join(SENS_LAYERS),
            "--batch-size",
            str(BATCH),
            "--no-plots",
            "--out",
            str(out / "sensitivity"),
        ],
    ]
    env = {**os.environ, "VITQUANT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKER),
        json.dumps(commands),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run.stdout


@pytest.fixture(scope="module")
def vit(digits_models):
    return load_model("digits_vit")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_only_rank_0_prints_and_writes(torchrun):
    out, stdout = torchrun
    assert stdout.count("wrote ") == 3, stdout  # one line per command, not one per rank
    for name in ("eval", "analyze", "sensitivity"):
        assert (out / name / f"{name}.json").is_file()


def test_eval_accuracy_equals_one_process(torchrun, vit):
    out, _ = torchrun
    result = _json(out / "eval" / "eval.json")
    expected = accuracy(vit.model, load_data("digits"), "test", vit.spec)
    assert result["n"] == 360
    assert result["accuracy"] == expected  # exactly: the same 360 predictions


EXACT = (
    "count",
    "min",
    "max",
    "q1",
    "median",
    "q3",
    "iqr",
    "lower_fence",
    "upper_fence",
    "outlier_count",
    "outlier_pct",
    "significant",
    "whisker_low",
    "whisker_high",
    "n_channels",
    "channel_absmax_max",
    "channel_absmax_median",
)


def test_analyze_figures_equal_one_process(torchrun, vit):
    out, _ = torchrun
    layers = _json(out / "analyze" / "analyze.json")["layers"]
    bundle = load_data("digits", calib=CALIB)
    ref = collect_activation_stats(vit.model, bundle, vit.spec, batch_size=BATCH, progress=False)
    assert [r["point"] for r in layers] == [s.point for s in ref]
    assert len(ref) == 27
    for row, s in zip(layers, ref, strict=True):
        assert row["count"] == s.count > 0
        for key in EXACT:
            assert row[key] == getattr(s, key), (s.point, key)
        # Each batch's mean and variance are float32 reductions (torch.var_mean), and the ranks'
        # batches hold other images than one process's, so mean and std agree to float32
        # rounding (seen: <= 3e-9 of |mean| + std, <= 3e-8 of std), not to the last bit.
        assert abs(row["mean"] - s.mean) <= 1e-7 * (abs(s.mean) + s.std), s.point
        assert row["std"] == pytest.approx(s.std, rel=1e-6), s.point
    assert sum(r["significant"] for r in layers) >= 1  # the case has outlier-heavy points


def test_sensitivity_figures_equal_one_process(torchrun, vit):
    out, _ = torchrun
    result = _json(out / "sensitivity" / "sensitivity.json")
    bundle = load_data("digits", calib=SENS_CALIB, val=SENS_VAL)
    ref = per_layer_sensitivity(
        vit.model, bundle, vit.spec, layers=SENS_LAYERS, batch_size=BATCH, progress=False
    )
    assert [r["name"] for r in result["layers"]] == [r.name for r in ref]
    for row, r in zip(result["layers"], ref, strict=True):
        for key in (
            "float_acc",
            "only_acc",
            "only_agreement",
            "all_but_acc",
            "all_but_agreement",
            "all_acc",
            "rank",
        ):
            assert row[key] == getattr(r, key), (r.name, key)  # ratios of counts: exact
        for key in ("only_kl", "all_but_kl", "all_kl"):
            assert row[key] == pytest.approx(getattr(r, key), rel=1e-9, abs=1e-15), (r.name, key)
    assert result["all_kl"] > 0


# --- the merges themselves, against NumPy -----------------------------------------------------


def test_interleave_undoes_sharding():
    whole = torch.arange(11 * 2).reshape(11, 2)
    assert torch.equal(interleave([whole[r::3] for r in range(3)]), whole)
    one = torch.arange(1)
    assert torch.equal(interleave([one, None, None]), one)  # ranks without images


def test_chan_merge_equals_numpy_moments():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, n) for n in (5, 0, 1000, 37)]
    summary = (0, 0.0, 0.0)
    for c in chunks:
        summary = chan_merge(
            summary,
            (
                len(c),
                float(c.mean()) if len(c) else 0.0,
                float(((c - c.mean()) ** 2).sum()) if len(c) else 0.0,
            ),
        )
    whole = np.concatenate(chunks)
    assert summary[0] == len(whole)
    assert summary[1] == pytest.approx(whole.mean(), rel=1e-12)
    assert summary[2] / summary[0] == pytest.approx(whole.var(), rel=1e-12)


def test_merged_samples_are_uniform_over_the_union():
    rng = np.random.default_rng(0)
    a, b = np.arange(900, dtype=np.float32), np.arange(900, 1000, dtype=np.float32)
    from_b = []
    for _ in range(2000):
        sa = rng.choice(a, 50, replace=False)  # uniform samples of each stream
        sb = rng.choice(b, 50, replace=False)
        seen, merged = merge_samples([(900, sa), (100, sb)], 50, rng)
        assert seen == 1000 and len(merged) == 50 and len(np.unique(merged)) == 50
        assert np.isin(merged, np.concatenate([sa, sb])).all()
        from_b.append((merged >= 900).mean())
    # Hypergeometric: a tenth of a uniform sample of the union comes from b (sd 0.04 / sqrt(2000)).
    assert np.mean(from_b) == pytest.approx(0.1, abs=0.005)
    seen, small = merge_samples([(3, a[:3]), (0, b[:0]), (2, b[:2])], 50, rng)
    assert seen == 5 and sorted(small) == [0, 1, 2, 900, 901]  # under capacity: keeps them all
