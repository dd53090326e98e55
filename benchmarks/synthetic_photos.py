"""A synthetic ImageFolder of photo-like JPEGs of varied sizes and aspect ratios (around 224 px).

Used by the loader benchmark and the DeiT-S pipeline timing: what matters there is the cost of
decoding and resizing real JPEG files of mixed sizes, not what they show. Each image is smooth
random colour (bicubic upsampling of an 8x8 grid plus a little noise), saved at quality 90, so
files are about the size of a photo of the same resolution.

    python benchmarks/synthetic_photos.py runs/bench/photos-1000 --per-class 100 --classes 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(
    root: Path, *, per_class: int, classes: int = 10, split: str = "test", seed: int = 0
) -> Path:
    """Write ``root/split/class_k/i.jpg`` (skipped when the folder already holds them all)."""
    rng = np.random.default_rng(seed)
    out = Path(root) / split
    done = out / ".complete"
    if done.exists() and done.read_text() == f"{per_class}x{classes}":
        return out
    for k in range(classes):
        d = out / f"class_{k:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(160, 400, size=2))  # both sides 160..399
            grid = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.int16)
            img = img + rng.integers(-12, 13, img.shape, dtype=np.int16)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    done.write_text(f"{per_class}x{classes}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--splits", default="test", help="comma-separated, e.g. train,test")
    args = parser.parse_args()
    for j, split in enumerate(args.splits.split(",")):
        make_folder(args.root, per_class=args.per_class, classes=args.classes, split=split, seed=j)
    print(args.root)


if __name__ == "__main__":
    main()
