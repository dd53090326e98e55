"""`vitquant eval` on a folder of photos with a timm model: the figures of a plain loop, clipped
requests as notes, and a broken image found mid-run as one error line with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision.datasets import ImageFolder


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitquant", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for split, per_class in (("train", 40), ("test", 12)):
        for cls in ("a", "b", "c"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                w, h = (int(v) for v in rng.integers(90, 260, size=2))
                grid = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
                Image.fromarray(grid).resize((w, h), Image.BICUBIC).save(d / f"{i}.jpg")
    model = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    torch.save(model.state_dict(), root / "ckpt.pt")
    return root, model


def test_eval_on_a_folder_equals_timms_loop_and_notes_the_clipped_calib(folder, tmp_path):
    root, model = folder
    out = tmp_path / "ev"
    proc = run(
        "eval",
        "timm:test_vit",
        "--checkpoint",
        str(root / "ckpt.pt"),
        "--data",
        str(root),
        "--val",
        "60",
        "--calib",
        "100",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "eval.json").read_text())
    note = "--calib 100 asked, only 60 available: using 60"
    assert note in result["notes"] and note in " ".join(proc.stdout.split())
    assert result["n_calib"] == 60 and result["n"] == 36
    ds = ImageFolder(
        str(root / "test"), transform=create_transform(**resolve_data_config(model=model))
    )
    with torch.no_grad():
        correct = sum(int(model(x[None]).argmax(1)) == y for x, y in ds)
    assert result["accuracy"] == pytest.approx(correct / len(ds), abs=1e-6)


def test_a_broken_image_mid_run_is_one_line_exit_2_and_nothing_written(folder, tmp_path):
    root, _ = folder
    broken = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            (broken / split / cls).mkdir(parents=True)
            for p in sorted((root / split / cls).iterdir())[:6]:
                (broken / split / cls / p.name).write_bytes(p.read_bytes())
    (broken / "test" / "c" / "9_truncated.jpg").write_bytes(
        (root / "test" / "c" / "0.jpg").read_bytes()[:300]
    )
    out = tmp_path / "ev"
    proc = run(
        "eval",
        "timm:test_vit",
        "--checkpoint",
        str(root / "ckpt.pt"),
        "--data",
        str(broken),
        "--val",
        "3",
        "--calib",
        "3",
        "--out",
        str(out),
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: cannot read image")
    assert "9_truncated.jpg" in errors[0] and "Traceback" not in proc.stderr
    assert not (out / "eval.json").exists()
