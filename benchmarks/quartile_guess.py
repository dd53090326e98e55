"""How well the first images guess where each point's quartiles lie (could `analyze` do one pass?).

A one-pass exact design would guess each quartile's coarse bucket from the first ``--pilot``
images, keep every value of the buckets around the guess through the single pass, and fall
back to a second pass for any point whose quartile lands outside. This benchmark measures the
guess: for each point of ``--model`` and each of Q1, median and Q3, it compares the bucket the
pilot's 65,536-bin histogram points to with the bucket the histogram of all ``--images`` gives:

- ``rank_error``: how far, as a fraction of all values, the pilot's bucket lies from the
  quartile (the full data's cumulative share at the pilot's bucket, minus q);
- ``bucket_distance``: how many coarse buckets apart the two are;
- ``oracle_kept_mib``: the memory an oracle that knew the miss in advance would need to keep
  the buckets between the guess and the truth (a buffer of the values, or a 65,536-bin histogram
  for a bucket of more than 65,536 values). A real design needs margins on top;
- ``window_mib``: what a real design would keep with a window it can choose, every bucket whose
  pilot share lies within the worst rank error measured here of q: no quartile is missed then
  (in this run), and this is its memory.

    python benchmarks/quartile_guess.py              # cifar_vit: 64-image pilot, 1,000 images

Writes JSON to runs/bench/quartile_guess.json (or --out) and prints a summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vitquant.analysis.hooks import observation_points, observe
from vitquant.analysis.keys import BUCKETS, RAW_OF_BUCKET
from vitquant.analysis.stats import QUANTILES, PointAccumulator
from vitquant.data import load_data
from vitquant.io import write_json
from vitquant.registry import load_model


def histograms(model, points, batches) -> dict[str, torch.Tensor]:
    """Each point's coarse key histogram (key order) over ``batches``."""
    accs = {p.point: PointAccumulator(p) for p in points}
    with torch.no_grad(), observe(model, points, lambda p, out: accs[p.point].update1(out)):
        for x in batches:
            model(x)
    return {name: acc.hist_raw[RAW_OF_BUCKET] for name, acc in accs.items()}


def _kept_mib(counts: np.ndarray) -> float:
    """A bucket's values as a buffer (4 bytes each), or a 65,536-bin int32 histogram."""
    return float(np.where(counts > BUCKETS, BUCKETS * 4, counts * 4).sum()) / 2**20


def window_mib(pilot: torch.Tensor, full: torch.Tensor, width: float) -> float:
    """Memory of keeping, around each quartile, the buckets whose pilot share is within
    ``width`` of q (the buckets' ranges may overlap; each is counted once)."""
    cdf = (torch.cumsum(pilot, 0).double() / pilot.sum()).numpy()
    below = np.concatenate([[0.0], cdf[:-1]])
    keep = np.zeros(len(cdf), dtype=bool)
    for q in QUANTILES:
        keep |= (cdf >= q - width) & (below <= q + width)
    return _kept_mib(full.numpy()[keep])


def guess_errors(pilot: torch.Tensor, full: torch.Tensor) -> list[dict]:
    """Per quartile: the pilot's bucket against the full histogram's (see the docstring)."""
    pilot_cdf = torch.cumsum(pilot, 0).double() / pilot.sum()
    full_cdf = torch.cumsum(full, 0).double() / full.sum()
    out = []
    for q in QUANTILES:
        at = torch.tensor(q, dtype=torch.float64)
        guess = int(torch.searchsorted(pilot_cdf, at))
        truth = int(torch.searchsorted(full_cdf, at))
        lo, hi = sorted((guess, truth))
        out.append(
            {
                "q": q,
                "rank_error": abs(float(full_cdf[guess]) - q),
                "bucket_distance": hi - lo,
                "oracle_kept_mib": _kept_mib(full[lo : hi + 1].numpy()),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_vit")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pilot", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/quartile_guess.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model)
    model = loaded.model.eval()
    bundle = load_data(args.data, calib=args.images)
    batches = [x for x, _ in bundle.batches("calib", loaded.spec, batch_size=args.batch_size)]
    points = observation_points(model, batches[0][:2], family=loaded.spec.family)
    pilot = histograms(model, points, [torch.cat(batches)[: args.pilot]])
    full = histograms(model, points, batches)
    rows = [
        {"point": p.point, "kind": p.kind, **e}
        for p in points
        for e in guess_errors(pilot[p.point], full[p.point])
    ]
    rank = np.array([r["rank_error"] for r in rows])
    dist = np.array([r["bucket_distance"] for r in rows])
    kept = sum(r["oracle_kept_mib"] for r in rows)
    width = float(rank.max())
    window = sum(window_mib(pilot[p.point], full[p.point], width) for p in points)
    summary = {
        "quartiles": len(rows),
        "rank_error": {
            "median": float(np.median(rank)),
            "p90": float(np.quantile(rank, 0.9)),
            "max": float(rank.max()),
        },
        "bucket_distance": {
            "median": float(np.median(dist)),
            "p90": float(np.quantile(dist, 0.9)),
            "max": int(dist.max()),
        },
        "oracle_kept_mib_total": kept,
        "window_width": width,
        "window_mib_total": window,
    }
    write_json(
        args.out,
        {
            "benchmark": "quartile_guess",
            "model": args.model,
            "images": len(bundle.calib_idx),
            "pilot_images": args.pilot,
            "summary": summary,
            "rows": rows,
        },
    )
    r, d = summary["rank_error"], summary["bucket_distance"]
    print(
        f"{len(rows)} quartiles guessed from {args.pilot} of {len(bundle.calib_idx)} images: "
        f"rank error median {100 * r['median']:.2f}%, p90 {100 * r['p90']:.2f}%, "
        f"max {100 * r['max']:.2f}%; bucket distance median {d['median']:.0f}, p90 "
        f"{d['p90']:.0f}, max {d['max']}; oracle kept memory {kept:.0f} MiB; a window of "
        f"+-{100 * width:.2f}% around each guess keeps {window:.0f} MiB; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
