"""What `analyze`'s activation statistics cost: time against plain inference, memory against N.

Time: one child process loads the model and ``--time-images`` calibration images, then runs
``--repeats`` rounds, each timing plain inference (``model(x)`` under ``no_grad`` over the same
batches from the same loader, no hooks) and ``collect_activation_stats`` back to back (the
order alternating between rounds). The ratio is the median of the per-round ratios
``analysis / plain`` with its interquartile range: interleaved, so a slower minute for the
machine slows both sides. Each round also records the seconds spent in the statistics' own
steps (``PointAccumulator.update1`` ... ``update3``); ``breakdown_in_plain_passes`` sets them and
the rest (forward passes with hooks, data loading) against one plain pass. Two passes over the
images cost two plain passes before any statistic is taken: the floor of a two-pass design.

Each round also times a **one-pass floor**: one forward pass over the same images whose hooks
run only the per-value work any exact design must do at least once: pass 1's kernels (the
65,536-bin histogram, moments and channel extremes) and pass 2's scan for the values it needs
(``_busy`` against a table marking 6% of the buckets), with no bookkeeping, sampling or second
pass. It bounds from below what even a one-pass design with perfect guesses would cost.

Memory: each of ``--sizes`` runs in a child process of its own (so sizes do not contaminate
each other), which reports its peak resident set size (``ru_maxrss``) after loading the model
and data and after the analysis. The statistics are streaming, so the peak must not grow by more
than ``LIMIT_MB`` from the smallest size to the largest. Two measures:

- the peak of the memory the analysis allocates through Python and NumPy (``tracemalloc``: every
  statistic's state, the kept buckets, the samples; not PyTorch's activations, whose size does
  not depend on N). It is the same from run to run, and it decides ``memory_flat``;
- the process' peak resident set size. The same size's peak varies by ~150 MB from one process
  to the next (the allocator), so each size runs ``--memory-repeats`` times, interleaved with
  the other sizes, and the medians are reported.

    python benchmarks/analysis_cost.py                        # cifar_vit: 1,000 images timed
    python benchmarks/analysis_cost.py --model digits_vit --data digits --sizes 100 400 \\
        --time-images 200 --repeats 2
    python benchmarks/analysis_cost.py --model timm:deit_small_patch16_224 --batch-size 32 \
        --time-images 128 --sizes 64 256 --memory-repeats 1 \
        --out runs/bench/analysis_cost_deit_s.json

Writes JSON to runs/bench/analysis_cost.json (or --out) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIMIT_MB = 100.0
TARGET_RATIO = 2.0  # issue 14: analyze at most 2x plain inference over the same images


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _load(model_name: str, data: str, n: int):
    import torch

    from vitquant.data import load_data
    from vitquant.registry import load_model

    torch.manual_seed(0)
    # a timm: architecture without its checkpoint (offline): random weights, on purpose
    loaded = load_model(model_name, random_weights=model_name.startswith("timm:"))
    loaded.model.eval()
    return loaded, load_data(data, calib=n)


STEPS = ("update1", "begin2", "update2", "end2", "update3")  # PointAccumulator's steps


def _analyse(
    loaded, bundle, batch_size: int, passes: list | None = None, spent: dict | None = None
):
    """``collect_activation_stats``; ``passes`` collects each point's "needed a third pass",
    ``spent`` the seconds spent in each accumulator step (``STEPS``: the statistics' own work,
    outside the model's forward passes)."""
    from vitquant.analysis import stats

    originals = {name: getattr(stats.PointAccumulator, name) for name in STEPS}

    def timed(name):
        def step(acc, *args):
            start = time.perf_counter()
            out = originals[name](acc, *args)
            if spent is not None:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            if name == "end2" and passes is not None:
                passes.append(getattr(acc, "needs_pass3", True))
            return out

        return step

    for name in STEPS:
        setattr(stats.PointAccumulator, name, timed(name))
    try:
        return stats.collect_activation_stats(
            loaded.model, bundle, loaded.spec, batch_size=batch_size, progress=False
        )
    finally:
        for name, original in originals.items():
            setattr(stats.PointAccumulator, name, original)


def one_pass_floor(loaded, bundle, batch_size: int) -> None:
    """One forward pass whose hooks do only the per-value kernels (see the module docstring)."""
    import numpy as np
    import torch

    from vitquant.analysis import kernels
    from vitquant.analysis.hooks import observation_points, observe
    from vitquant.analysis.keys import BUCKETS

    example, _ = next(bundle.batches("calib", loaded.spec, batch_size=2))
    points = observation_points(loaded.model, example, family=loaded.spec.family)
    hists = {p.point: np.zeros(BUCKETS, np.int64) for p in points}
    busy = np.zeros(BUCKETS, np.uint8)
    busy[np.random.default_rng(0).choice(BUCKETS, BUCKETS * 6 // 100)] = 1
    scratch = np.empty(0, np.int32)

    def hook(p, out):
        nonlocal scratch
        kernels.batch_summary(out, p.channel_dim % out.dim(), 0.0, hists[p.point])
        bits = out.float().contiguous().reshape(-1).numpy().view(np.uint32)
        if len(scratch) <= len(bits):
            scratch = np.empty(len(bits) + 1, np.int32)
        kernels._busy(bits, busy, scratch)

    with torch.no_grad(), observe(loaded.model, points, hook):
        for x, _ in bundle.batches("calib", loaded.spec, batch_size=batch_size):
            loaded.model(x)


def time_child(model_name: str, data: str, n: int, batch_size: int, repeats: int) -> dict:
    """Interleaved rounds of plain inference and analysis over the same ``n`` images."""
    import torch

    loaded, bundle = _load(model_name, data, n)

    @torch.no_grad()
    def plain() -> None:
        for x, _ in bundle.batches("calib", loaded.spec, batch_size=batch_size):
            loaded.model(x)

    plain()  # warm-ups (allocator, first-call costs, the analysis' imports)
    _analyse(loaded, bundle, batch_size)
    one_pass_floor(loaded, bundle, batch_size)
    rounds = []
    third: list[bool] = []
    for r in range(repeats):
        times = {}
        order = ("plain", "analysis", "one_pass_floor")
        for name in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            if name == "plain":
                plain()
            elif name == "one_pass_floor":
                one_pass_floor(loaded, bundle, batch_size)
            else:
                spent: dict = {}
                stats = _analyse(loaded, bundle, batch_size, third if r == 0 else None, spent)
            times[name] = time.perf_counter() - start
        times["statistics"] = {k: round(v, 4) for k, v in spent.items()}
        rounds.append(times)
    ratios = [t["analysis"] / t["plain"] for t in rounds]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    floors = [t["one_pass_floor"] / t["plain"] for t in rounds]
    fq = statistics.quantiles(floors, n=4) if len(floors) > 1 else [floors[0]] * 3
    return {
        "images": len(bundle.calib_idx),
        "points": len(stats),
        "values_per_pass": int(sum(s.count for s in stats)),
        "points_needing_a_third_pass": int(sum(third)),
        "rounds_s": rounds,
        "plain_s_median": statistics.median(t["plain"] for t in rounds),
        "analysis_s_median": statistics.median(t["analysis"] for t in rounds),
        "ratio": {"median": statistics.median(ratios), "iqr": q[2] - q[0]},
        # one forward with only the per-value kernels (pass 1's and pass 2's scan): the floor
        # of any exact design on this machine, a one-pass one with perfect guesses included
        "one_pass_floor_ratio": {"median": statistics.median(floors), "iqr": fq[2] - fq[0]},
        # Where the analysis' time goes, in units of one plain pass (per-round medians): its
        # forward passes over the images (with hooks) and the statistics' own steps.
        "breakdown_in_plain_passes": breakdown(rounds),
        "profile": profile(loaded, bundle, batch_size),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def profile(loaded, bundle, batch_size: int, top: int = 20) -> list[dict]:
    """One more analysis under cProfile (after the timed rounds): the ``top`` functions by their
    own time, PyTorch operators and the statistics' kernels alike (cProfile's overhead included,
    so the shares matter, not the seconds)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    _analyse(loaded, bundle, batch_size)
    prof.disable()
    rows = pstats.Stats(prof).stats  # (file, line, name) -> (calls, _, own s, cumulative s, _)
    total = sum(v[2] for v in rows.values())
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][2])[:top]
    return [
        {
            "function": name if file == "~" else f"{Path(file).name}:{line}({name})",
            "calls": v[0],
            "own_s": round(v[2], 4),
            "own_share": round(v[2] / total, 4),
        }
        for (file, line, name), v in ranked
    ]


def breakdown(rounds: list[dict]) -> dict:
    """Per round, the analysis' time in plain passes: the statistics' steps (``STEPS``) and the
    rest (forward passes with hooks, data loading); medians over the rounds."""
    parts: dict[str, list[float]] = {}
    for t in rounds:
        steps = t["statistics"]
        spent = sum(steps.values())
        for name, seconds in steps.items():
            parts.setdefault(name, []).append(seconds / t["plain"])
        parts.setdefault("statistics", []).append(spent / t["plain"])
        parts.setdefault("forward_passes_and_loading", []).append(
            (t["analysis"] - spent) / t["plain"]
        )
    return {name: round(statistics.median(v), 3) for name, v in parts.items()}


def memory_child(model_name: str, data: str, n: int, batch_size: int) -> dict:
    """Analyse ``n`` calibration images in this process; report peak memory."""
    import tracemalloc

    loaded, bundle = _load(model_name, data, n)
    before = _rss_mb()
    start = time.perf_counter()
    tracemalloc.start()  # NumPy's arrays (all the statistics' state) and Python objects
    stats = _analyse(loaded, bundle, batch_size)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        "images": len(bundle.calib_idx),
        "points": len(stats),
        "peak_rss_mb_before": before,
        "peak_rss_mb": _rss_mb(),
        "traced_peak_mb": traced_peak,
        "seconds": time.perf_counter() - start,
        "mean_outlier_pct": sum(s.outlier_pct for s in stats) / len(stats),
    }


def _child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--model", args.model, "--data", args.data]
    cmd += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats), *extra]
    env = {**os.environ, "VITQUANT_QUIET": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"child {extra} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_vit")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--time-images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/analysis_cost.json"))
    parser.add_argument("--time-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_child is not None:
        result = time_child(args.model, args.data, args.time_child, args.batch_size, args.repeats)
        print(json.dumps(result))
        return
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.model, args.data, args.memory_child, args.batch_size)))
        return

    timing = _child(args, "--time-child", str(args.time_images))
    print(
        f"{timing['images']} images, {timing['points']} points: analysis "
        f"{timing['analysis_s_median']:.1f} s vs plain inference {timing['plain_s_median']:.2f} s"
        f" = {timing['ratio']['median']:.2f}x (IQR {timing['ratio']['iqr']:.2f}); "
        f"{timing['points_needing_a_third_pass']} points needed a third pass"
    )
    floor = timing["one_pass_floor_ratio"]
    print(
        f"one-pass floor (one forward, per-value kernels only): {floor['median']:.2f}x "
        f"(IQR {floor['iqr']:.2f})"
    )
    print(
        "in plain passes: "
        + ", ".join(f"{k} {v:.2f}" for k, v in timing["breakdown_in_plain_passes"].items())
    )
    print(
        "profile (own time): "
        + ", ".join(f"{r['function']} {100 * r['own_share']:.0f}%" for r in timing["profile"][:10])
    )
    peaks: dict[int, list[float]] = {n: [] for n in args.sizes}
    traced: dict[int, list[float]] = {n: [] for n in args.sizes}
    runs = []
    for _ in range(args.memory_repeats):
        for n in args.sizes:
            result = _child(args, "--memory-child", str(n))
            runs.append(result)
            peaks[n].append(result["peak_rss_mb"])
            traced[n].append(result["traced_peak_mb"])
            print(
                f"{n:>6} images: peak RSS {result['peak_rss_mb']:.1f} MB (after loading "
                f"{result['peak_rss_mb_before']:.1f} MB), analysis' own peak "
                f"{result['traced_peak_mb']:.1f} MB, {result['seconds']:.1f} s"
            )
    median_peak = {n: statistics.median(v) for n, v in peaks.items()}
    traced_peak = {n: max(v) for n, v in traced.items()}
    small, large = min(args.sizes), max(args.sizes)
    growth = traced_peak[large] - traced_peak[small]
    rss_growth = median_peak[large] - median_peak[small]
    payload = {
        "benchmark": "analysis_cost",
        "model": args.model,
        "data": args.data,
        "batch_size": args.batch_size,
        "timing": timing,
        "target_ratio": TARGET_RATIO,
        "ratio_met": timing["ratio"]["median"] <= TARGET_RATIO,
        "memory_runs": runs,
        "median_peak_rss_mb": median_peak,
        "rss_growth_mb": rss_growth,
        "traced_peak_mb": traced_peak,
        "growth_mb": growth,
        "limit_mb": LIMIT_MB,
        "memory_flat": growth <= LIMIT_MB,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_capability": timing["cpu_capability"],
        },
    }
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vitquant.io import write_json

    write_json(args.out, payload)
    print(
        f"analysis' own memory {large} vs {small} images: {growth:+.1f} MB "
        f"(limit +{LIMIT_MB:.0f} MB) {'flat' if payload['memory_flat'] else 'GROWS'}; "
        f"peak RSS (medians) {rss_growth:+.1f} MB; "
        f"time ratio {'met' if payload['ratio_met'] else 'over'} the {TARGET_RATIO}x target; "
        f"wrote {args.out}"
    )
    if not payload["memory_flat"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
