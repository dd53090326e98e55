"""XNNPACK quantizer + ExecuTorch ``.pte`` on the full CIFAR-10 test set: accuracy, size, latency.

For each model: static PTQ with ExecuTorch's ``XNNPACKQuantizer`` (symmetric config,
per-channel, histogram observer, 256 calibration images) and its dynamic config, each lowered
to an XNNPACK ``.pte`` and run with ExecuTorch's runtime - the same ``run_variants`` call as
``vitquant quantize MODEL --method all --quantizer xnnpack --export pte --no-onnx``. The
target: every program's accuracy within 0.3 points of its PyTorch-side (pt2e) XNNPACK model.

    python benchmarks/executorch_xnnpack.py                       # cifar_vit, cifar_resnet20
    python benchmarks/executorch_xnnpack.py --models digits_vit --data digits

Writes JSON to runs/bench/executorch_xnnpack.json (or --out) and the saved models beside it
(runs/bench/executorch_xnnpack/<model>/); exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

TARGET_PTS = 0.3


def measure(
    model_name: str, data: str, threads: int, calib: int, artifacts: Path, variants: list[str]
) -> dict:
    """The fp32, pt2e-xnnpack and executorch-xnnpack rows of one model, and the gaps."""
    from vitquant.data import load_data
    from vitquant.quant.configs import StaticPTQ
    from vitquant.quant.run import QuantizeJob, run_variants
    from vitquant.registry import load_model

    loaded = load_model(model_name)
    bundle = load_data(data, calib=calib)
    job = QuantizeJob(
        static=StaticPTQ(backend="xnnpack", calib=calib),
        variants=("fp32", *variants),
        onnx=False,
        export="pte",
        threads=threads,
    )
    start = time.perf_counter()
    result = run_variants(loaded.model, bundle, loaded.spec, job, artifacts=artifacts, log=print)
    rows = {(r.variant, r.backend): r for r in result.rows}
    gaps = {
        v: abs(rows[(v, "executorch-xnnpack")].accuracy - rows[(v, "pt2e-xnnpack")].accuracy) * 100
        for v in variants
    }
    return {
        "model": model_name,
        "data": data,
        "n_test": rows[("fp32", "pytorch")].n,
        "threads": result.threads,
        "rows": [r.to_dict() for r in result.rows],
        "gap_pts": gaps,
        "target_pts": TARGET_PTS,
        "met": all(g <= TARGET_PTS for g in gaps.values()),
        "notes": result.notes,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cifar_vit", "cifar_resnet20"])
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=["static", "dynamic"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/executorch_xnnpack.json"))
    args = parser.parse_args()

    runs = [
        measure(m, args.data, args.threads, args.calib, args.out.with_suffix("") / m, args.variants)
        for m in args.models
    ]
    doc = {
        "benchmark": "executorch_xnnpack",
        "machine": platform.platform(),
        "python": platform.python_version(),
        "runs": runs,
    }
    from vitquant.io import write_json

    write_json(args.out, doc)
    for r in runs:
        fp32 = next(x for x in r["rows"] if x["backend"] == "pytorch")
        print(
            f"{r['model']}: fp32 {fp32['accuracy']:.4f}, {fp32['size_mb']:.3f} MiB, "
            f"{fp32['latency_ms_per_image']:.3f} ms/img ({r['threads']} thread(s), batch 1)"
        )
        for v, gap in r["gap_pts"].items():
            pt2e, pte = (
                next(x for x in r["rows"] if x["variant"] == v and x["backend"] == b)
                for b in ("pt2e-xnnpack", "executorch-xnnpack")
            )
            print(
                f"  {v}: pt2e-xnnpack {pt2e['accuracy']:.4f} | .pte {pte['accuracy']:.4f} "
                f"(gap {gap:.2f} pts, target <= {TARGET_PTS}) | {pte['size_mb']:.3f} MiB | "
                f"{pte['latency_ms_per_image']:.3f} ms/img"
            )
    print(f"wrote {args.out}")
    if not all(r["met"] for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
