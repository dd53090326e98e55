"""Peak memory of `collect_activation_stats` as the number of images grows.

Each size runs in its own child process (so sizes do not contaminate each other) which reports
its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after loading the model
and data and after the analysis. The statistics are streaming, so analysing 2,000 images must peak
at most 100 MB above 500 images.

    python benchmarks/analysis_memory.py                       # cifar_vit on cifar10, 500 vs 2000
    python benchmarks/analysis_memory.py --model digits_vit --data digits --sizes 100 400

Writes JSON to runs/bench/analysis_memory.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

LIMIT_MB = 100.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(model_name: str, data: str, n: int, batch_size: int) -> dict:
    """Analyse ``n`` calibration images in this process; report peak memory."""
    import torch

    from vitquant.analysis.stats import collect_activation_stats
    from vitquant.data import load_data
    from vitquant.registry import load_model

    torch.manual_seed(0)
    loaded = load_model(model_name)
    bundle = load_data(data, calib=n)
    before = _rss_mb()
    start = time.perf_counter()
    stats = collect_activation_stats(
        loaded.model, bundle, loaded.spec, batch_size=batch_size, progress=False
    )
    seconds = time.perf_counter() - start
    return {
        "images": len(bundle.calib_idx),
        "points": len(stats),
        "values": int(sum(s.count for s in stats)),
        "peak_rss_mb_before": before,
        "peak_rss_mb": _rss_mb(),
        "seconds": seconds,
        "mean_outlier_pct": sum(s.outlier_pct for s in stats) / len(stats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_vit")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/analysis_memory.json"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.model, args.data, args.child, args.batch_size)))
        return

    runs = []
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--data",
            args.data,
            "--batch-size",
            str(args.batch_size),
            "--child",
            str(n),
        ]
        env = {**os.environ, "VITQUANT_QUIET": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"child for {n} images failed:\n{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(result)
        print(
            f"{n:>6} images: peak RSS {result['peak_rss_mb']:.1f} MB "
            f"(after loading {result['peak_rss_mb_before']:.1f} MB), "
            f"{result['seconds']:.1f} s"
        )
    small, large = runs[0], runs[-1]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    payload = {
        "benchmark": "analysis_memory",
        "model": args.model,
        "data": args.data,
        "batch_size": args.batch_size,
        "runs": runs,
        "growth_mb": growth,
        "limit_mb": LIMIT_MB,
        "passed": growth <= LIMIT_MB,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vitquant.io import write_json

    write_json(args.out, payload)
    verdict = "OK" if payload["passed"] else "FAILED"
    print(
        f"{large['images']} vs {small['images']} images: {growth:+.1f} MB "
        f"(limit +{LIMIT_MB:.0f} MB) {verdict}; wrote {args.out}"
    )
    if not payload["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
