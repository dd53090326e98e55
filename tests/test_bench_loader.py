"""``benchmarks/loader_memory.py --quick``: the JSON it writes is complete and self-consistent.

The benchmark runs once (100 and 300 images for memory, 32 for throughput) into a temporary
folder. The tests recompute its derived figures (ratios, medians, rates) from the raw ones it
records. Its verdicts are not asserted: the targets live in the benchmark, and a 100 vs 300
image run is too small for them (at 100 images eval's batch is smaller than its 256).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "loader_memory.py"

# Two `vitquant eval` subprocesses and DeiT-S on 32 images, 7 times: about 1.5 minutes on two
# idle cores, several on a busy machine.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("loader-memory")
    out = tmp / "loader_memory.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--photos-root", str(tmp), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| images |" in proc.stdout  # the markdown table
    return json.loads(out.read_text())


def test_records_machine_load_and_cache(bench):
    machine = bench["machine"]
    for key in ("cpu_model", "cpu_count", "cpu_capability", "torch_threads", "torch"):
        assert key in machine, key
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    assert bench["quick"] is True and bench["date"]
    assert set(bench["load_average"]) == {"start", "after_memory", "end"}
    assert all(len(v) == 3 for v in bench["load_average"].values())
    assert bench["disk_cache"]["exists_for_folders"] is False
    assert bench["disk_cache"]["default_limit_gib"] is None
    assert set(bench["verdicts"]) == {"rss_flat", "loader_not_bottleneck"}


def test_memory_peaks_are_plausible(bench):
    mem = bench["memory"]
    assert mem["sizes"] == [100, 300] and mem["input_size"] == [3, 224, 224]
    assert [r["images"] for r in mem["runs"]] == [100, 300]
    for run in mem["runs"]:
        assert run["n_evaluated"] == run["images"]
        for key in ("peak_rss_sum_mb", "peak_pss_sum_mb", "max_single_process_rss_mb"):
            assert 50 < run[key] < 20_000, (key, run[key])
        # PSS splits shared pages between the processes that map them: never above RSS.
        assert run["peak_pss_sum_mb"] <= run["peak_rss_sum_mb"]
        assert run["max_single_process_rss_mb"] <= run["peak_rss_sum_mb"] * 1.05
        # the tree was sampled: eval and (unless VITQUANT_WORKERS=0) its DataLoader workers
        assert run["peak_processes"] >= 1 + (bench["workers"] > 0)
        assert 0 < run["median_with_workers_mb"] <= run["peak_pss_sum_mb"]
        assert run["pss_samples"] >= 1 and run["samples"] >= run["pss_samples"]
        for t, rss, pss, count in run["trace"]:
            assert t >= 0 and count >= 1 and pss <= rss
        assert run["images_per_s"] == pytest.approx(run["n_evaluated"] / run["seconds"])


def test_memory_ratio_is_recomputed_from_the_peaks(bench):
    small, large = bench["memory"]["runs"]
    verdict = bench["memory"]["verdict"]
    pss = large["peak_pss_sum_mb"] / small["peak_pss_sum_mb"]
    rss = large["peak_rss_sum_mb"] / small["peak_rss_sum_mb"]
    assert verdict["metric"] == "pss_sum"
    assert verdict["ratio_pss_sum"] == pytest.approx(pss)
    assert verdict["ratio_rss_sum"] == pytest.approx(rss)
    assert verdict["ratio"] == pytest.approx(pss)
    assert verdict["rss_flat"] == (pss <= verdict["tolerance"])
    assert verdict["tolerance"] == pytest.approx(1.10)
    # A short run may end before a PSS sample sees its workers (no median then), and on a busy
    # machine the larger run need not take longer (no marginal rate then).
    small_med, large_med = small["median_with_workers_mb"], large["median_with_workers_mb"]
    if small_med and large_med:
        assert verdict["ratio_median_with_workers"] == pytest.approx(large_med / small_med)
    else:
        assert verdict["ratio_median_with_workers"] is None
    extra_s = large["seconds"] - small["seconds"]
    if extra_s > 0:
        rate = (large["images"] - small["images"]) / extra_s
        assert verdict["eval_marginal_images_per_s"] == pytest.approx(rate)
    else:
        assert verdict["eval_marginal_images_per_s"] is None


def test_throughput_ratio_is_recomputed_from_the_repeats(bench):
    speed = bench["throughput"]
    assert speed["model"] == "timm:deit_small_patch16_224"
    assert speed["images"] == 32 and speed["input_shape"] == [3, 224, 224]
    assert speed["inputs_identical"] is True  # both paths fed the very same tensors
    loader = speed["loader_images_per_s"]
    decoded = speed["pre_decoded_images_per_s"]
    assert len(loader["repeats"]) == len(decoded["repeats"]) >= 3
    for summary in (loader, decoded):
        values = summary["repeats"]
        assert all(v > 0 for v in values)
        assert summary["median"] == pytest.approx(statistics.median(values))
        assert (summary["min"], summary["max"]) == (min(values), max(values))
    ratio = statistics.median(loader["repeats"]) / statistics.median(decoded["repeats"])
    assert speed["ratio"] == pytest.approx(ratio)
    assert speed["ratio_min"] <= speed["ratio"] <= speed["ratio_max"]
    assert speed["loader_not_bottleneck"] == (ratio >= speed["target"])
    assert speed["target"] == pytest.approx(0.90)
