"""The one row builder: every number of a measured row against an independent computation
(NumPy on a tiny model's logits, file sizes from the file system, speedups from latencies)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from vitquant.distributed import DistContext
from vitquant.errors import VitquantError
from vitquant.measure import Candidate, Measurer
from vitquant.results import ScoreWeights, validate_rows

N = {"val": 40, "test": 70}


@dataclass
class Spec:
    input_size: tuple[int, int, int] = (1, 4, 4)


class Bundle:
    """Two roles of 16-pixel images with labels; counts how often each role is read."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = {
            role: (torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
            for role, n in N.items()
        }
        self.reads: Counter = Counter()

    def batches(self, role, spec, *, batch_size=256, progress=None, shard=None, **kw):
        self.reads[role] += 1
        x, y = self.data[role]
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]


def tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def np_preds(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    w, b = (p.detach().numpy().astype(np.float64) for p in model[1].parameters())
    return (x.reshape(len(x), -1).numpy() @ w.T + b).argmax(1)


class Threaded:
    """A runner that reports its runtime's own thread count, as ORT and ExecuTorch ones do."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.threads = model, 3

    def __call__(self, x):
        return self.model(x)


@pytest.fixture()
def measured(tmp_path):
    bundle = Bundle()
    fp32, quant, other = tiny(0), tiny(0), tiny(1)
    with torch.no_grad():  # a perturbed copy: most predictions agree, some do not
        quant[1].weight.add_(0.3 * torch.randn_like(quant[1].weight))
    path = tmp_path / "fp32.pt"
    torch.save(fp32.state_dict(), path)
    measurer = Measurer(
        bundle,
        Spec(),
        roles=("val", "test"),
        latency_batches=(1, 8),
        latency_batch=8,
        threads=1,
        log=None,
    )
    reads_at_start = Counter(bundle.reads)
    measurer.measure(Candidate("fp32", "pytorch", fp32, artifact=path, float_layers=["1"]))
    measurer.measure(
        Candidate("fp32", "onnxruntime", Threaded(fp32), runtime="onnxruntime", size_bytes=2**19)
    )
    measurer.measure(
        Candidate(
            "static",
            "onnxruntime",
            Threaded(quant),
            runtime="onnxruntime",
            size_bytes=2**18,
            int8_layers=["1"],
            twin=("fp32", "onnxruntime"),
        )
    )
    measurer.measure(Candidate("other", "pytorch", other, size_bytes=3, int8_layers=1))
    return bundle, (fp32, quant, other), path, measurer, reads_at_start


def test_accuracy_and_agreement_equal_numpy(measured):
    bundle, models, _, measurer, _ = measured
    rows = measurer.finalize()
    preds = {r: [np_preds(m, bundle.data[r][0]) for m in models] for r in N}
    labels = {r: bundle.data[r][1].numpy() for r in N}
    expected = {"fp32": 0, "static": 1, "other": 2}
    for row in rows:
        i = expected[row.variant]
        assert row.split == "test" and row.n == N["test"]
        assert row.accuracy == pytest.approx((preds["test"][i] == labels["test"]).mean())
        assert row.val_accuracy == pytest.approx((preds["val"][i] == labels["val"]).mean())
        agree = (preds["test"][i] == preds["test"][0]).mean()
        assert row.agreement_fp32 == pytest.approx(agree)
        fp32_acc = (preds["test"][0] == labels["test"]).mean()
        assert row.drop_pts == pytest.approx((fp32_acc - row.accuracy) * 100, abs=1e-4)
    static = next(r for r in rows if r.variant == "static")
    assert 0 < static.agreement_pt2e < 1  # the perturbation changed some predictions
    assert static.agreement_pt2e == pytest.approx((preds["test"][1] == preds["test"][0]).mean())
    assert static.extra == {"twin": ["fp32", "onnxruntime"], "runtime_threads": 3}
    assert [r.agreement_pt2e for r in rows if r.variant != "static"] == [None] * 3
    validate_rows(rows)


def test_each_role_is_read_once_per_candidate(measured):
    bundle, _, _, measurer, before = measured
    runs = len(measurer.measured)
    assert bundle.reads - before == Counter({"val": runs, "test": runs})


def test_sizes_layers_and_latency_fields(measured):
    _, _, path, measurer, _ = measured
    fp32, ort, static, other = measurer.finalize()
    assert fp32.size_mb == os.path.getsize(path) / 2**20 and fp32.artifact == str(path)
    assert ort.size_mb == 0.5 and static.size_mb == 0.25 and other.size_mb == 3 / 2**20
    assert (fp32.float_layers, static.int8_layers, other.int8_layers) == (1, 1, 1)
    for row in (fp32, ort, static, other):
        assert set(row.latency_ms_per_image_by_batch) == {"1", "8"}
        assert row.latency_ms_per_image == row.latency_ms_per_image_by_batch["8"] > 0
        assert row.latency_spread_ms >= 0 and row.latency_batch == 8
        assert row.latency_threads == 1
        assert row.cpu_capability == torch.backends.cpu.get_cpu_capability()


def test_speedups_and_score_are_ratios_of_the_fp32_rows(measured):
    _, _, _, measurer, _ = measured
    weights = ScoreWeights(accuracy=1.0, size=0.5, speed=0.25)
    fp32, ort, static, other = measurer.finalize(weights)
    for row in (fp32, ort, static, other):
        eager = fp32.latency_ms_per_image_by_batch["8"] / row.latency_ms_per_image
        assert row.speedup_vs_fp32_eager == pytest.approx(eager)
        same = fp32 if row.runtime == "pytorch" else ort
        runtime = same.latency_ms_per_image_by_batch["8"] / row.latency_ms_per_image
        assert row.speedup_vs_fp32_same_runtime == pytest.approx(runtime)
        score = (
            row.accuracy
            + 0.5 * (1 - row.size_mb / fp32.size_mb)
            + 0.25 * (1 - row.latency_ms_per_image / fp32.latency_ms_per_image)
        )
        assert row.score == pytest.approx(score)
    assert fp32.speedup_vs_fp32_eager == pytest.approx(1.0)


def test_non_main_ranks_do_not_time():
    bundle = Bundle()
    measurer = Measurer(
        bundle, Spec(), latency_batches=(1,), ctx=DistContext(rank=1, world=1), log=None
    )
    row = measurer.measure(Candidate("fp32", "pytorch", tiny(0)))
    assert row.latency_ms_per_image is None and row.latency_ms_per_image_by_batch == {}
    assert row.accuracy > 0 and row.agreement_fp32 == 1.0


def test_refusals():
    bundle = Bundle()
    with pytest.raises(VitquantError, match="latency-batch 4"):
        Measurer(bundle, Spec(), latency_batches=(1,), latency_batch=4)
    with pytest.raises(VitquantError, match="at least one data role"):
        Measurer(bundle, Spec(), roles=())
    with pytest.raises(VitquantError, match="unknown runtime"):
        Candidate("fp32", "tflite", tiny(0), runtime="tflite")
    measurer = Measurer(bundle, Spec(), latency_batches=(), log=None)
    measurer.measure(Candidate("fp32", "pytorch", tiny(0)))
    with pytest.raises(VitquantError, match="already measured"):
        measurer.measure(Candidate("fp32", "pytorch", tiny(0)))
    with pytest.raises(VitquantError, match="not measured"):
        measurer.measure(Candidate("static", "onnxruntime", tiny(0), twin=("static", "x")))
