"""XNNPACK quantizer + ExecuTorch ``.pte`` on the full CIFAR-10 test set: accuracy, size, latency.

For each model: static PTQ with ExecuTorch's ``XNNPACKQuantizer`` (symmetric config,
per-channel, histogram observer, 256 calibration images), lowered to an XNNPACK ``.pte`` and run
with ExecuTorch's runtime - the same ``run_variants`` call as
``vitquant quantize MODEL --method static --quantizer xnnpack --export pte --no-onnx``. The
target: the program's accuracy within 0.3 points of the PyTorch-side (pt2e) XNNPACK model.

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


def measure(model_name: str, data: str, threads: int, calib: int, artifacts: Path) -> dict:
    """The fp32, pt2e-xnnpack and executorch-xnnpack rows of one model, and the gap."""
    from vitquant.data import load_data
    from vitquant.quant.configs import StaticPTQ
    from vitquant.quant.run import QuantizeJob, run_variants
    from vitquant.registry import load_model

    loaded = load_model(model_name)
    bundle = load_data(data, calib=calib)
    job = QuantizeJob(
        static=StaticPTQ(backend="xnnpack", calib=calib), variants=("fp32", "static"),
        onnx=False, export="pte", threads=threads,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_variants(loaded.model, bundle, loaded.spec, job, artifacts=artifacts, log=print)
    rows = {r.backend: r for r in result.rows}
    pte, pt2e = rows["executorch-xnnpack"], rows["pt2e-xnnpack"]
    gap = abs(pte.accuracy - pt2e.accuracy) * 100
    return {
        "model": model_name, "data": data, "n_test": pte.n, "threads": result.threads,
        "rows": [r.to_dict() for r in result.rows], "gap_pts": gap,
        "target_pts": TARGET_PTS, "met": gap <= TARGET_PTS, "notes": result.notes,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cifar_vit", "cifar_resnet20"])
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/executorch_xnnpack.json"))
    args = parser.parse_args()

    runs = [
        measure(m, args.data, args.threads, args.calib, args.out.with_suffix("") / m)
        for m in args.models
    ]
    doc = {"benchmark": "executorch_xnnpack", "machine": platform.platform(),
           "python": platform.python_version(), "runs": runs}  # fmt: skip
    from vitquant.io import write_json

    write_json(args.out, doc)
    for r in runs:
        acc = {row["backend"]: row for row in r["rows"]}
        pte = acc["executorch-xnnpack"]
        print(f"{r['model']}: fp32 {acc['pytorch']['accuracy']:.4f} | pt2e-xnnpack "
              f"{acc['pt2e-xnnpack']['accuracy']:.4f} | .pte {pte['accuracy']:.4f} "
              f"(gap {r['gap_pts']:.2f} pts, target <= {TARGET_PTS}) | .pte "
              f"{pte['size_mb']:.3f} MiB vs fp32 {acc['pytorch']['size_mb']:.3f} MiB | "
              f"{pte['latency_ms_per_image']:.3f} vs {acc['pytorch']['latency_ms_per_image']:.3f}"
              f" ms/img at batch 1, {r['threads']} thread(s)")  # fmt: skip
    print(f"wrote {args.out}")
    if not all(r["met"] for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
