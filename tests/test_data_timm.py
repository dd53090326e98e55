"""Real photos at a timm model's resolution: vitquant's inputs and logits equal timm's own loop.

The reference is what a timm user writes by hand: ``torchvision.datasets.ImageFolder`` with
``timm.data.create_transform(**timm.data.resolve_data_config(model=m))``, one image at a time.
The folder mixes sizes, aspect ratios (portrait, landscape, tiny, large), a grayscale and a CMYK
JPEG, which both loaders must convert to RGB the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision.datasets import ImageFolder

from vitquant.data import load_data
from vitquant.evaluate import predict
from vitquant.registry import load_model

SIZES = [(320, 240), (240, 320), (97, 61), (500, 180), (160, 160), (1024, 768), (33, 400)]


def _photo_folder(root, rng) -> None:
    """Two classes of smooth random 'photos' (JPEG), plus a grayscale and a CMYK JPEG."""
    for cls in ("cat", "dog"):
        d = root / "test" / cls
        d.mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            img.save(d / f"{i}.jpg", quality=90)
        gray = Image.fromarray(rng.integers(0, 255, (90, 130), dtype=np.uint8), mode="L")
        gray.save(d / "gray.jpg")
        cmyk = Image.fromarray(rng.integers(0, 255, (150, 110, 3), dtype=np.uint8)).convert("CMYK")
        cmyk.save(d / "cmyk.jpg")
        assert Image.open(d / "cmyk.jpg").mode == "CMYK" and Image.open(d / "gray.jpg").mode == "L"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    _photo_folder(root, np.random.default_rng(0))
    model = timm.create_model("test_vit", pretrained=False, num_classes=2).eval()
    ckpt = root / "test_vit.pt"
    torch.save(model.state_dict(), ckpt)
    return root, ckpt, model


@pytest.mark.parametrize("workers", [0, 2])
def test_inputs_and_logits_equal_timms_own_loop(photos, workers, monkeypatch):
    root, ckpt, model = photos
    monkeypatch.setenv("VITQUANT_WORKERS", str(workers))
    # reference: a plain loop over ImageFolder with timm's transform
    transform = create_transform(**resolve_data_config(model=model))
    folder = ImageFolder(str(root / "test"), transform=transform)
    ref_x = {path: folder[i][0] for i, (path, _) in enumerate(folder.samples)}
    with torch.no_grad():
        ref_logits = {p: model(x[None])[0] for p, x in ref_x.items()}

    loaded = load_model("timm:test_vit", checkpoint=ckpt, num_classes=2)
    bundle = load_data(root, val=0, calib=0)
    paths = bundle.role("test").paths
    assert sorted(paths) == sorted(ref_x) and len(paths) == 18
    xs = torch.cat([x for x, _ in bundle.batches("test", loaded.spec, batch_size=5)])
    assert xs.shape == (18, 3, 160, 160)
    for path, x in zip(paths, xs, strict=True):
        torch.testing.assert_close(x, ref_x[path], atol=1e-4, rtol=0)
    logits, labels = predict(loaded.model, bundle, "test", loaded.spec, batch_size=4)
    for path, row in zip(paths, logits, strict=True):
        torch.testing.assert_close(row, ref_logits[path], atol=1e-4, rtol=1e-4)
    assert labels.tolist() == [folder.class_to_idx[p.split("/")[-2]] for p in paths]


def test_training_transform_is_timms(photos):
    """QAT/train batches of a timm model come through timm's training transform (random crop
    at the model's size, flips): same shape, different from the evaluation crop."""
    root, ckpt, _ = photos
    loaded = load_model("timm:test_vit", checkpoint=ckpt, num_classes=2)
    bundle = load_data(root, val=0, calib=0)
    gen = torch.Generator().manual_seed(0)
    train_x, _ = next(
        bundle.batches("test", loaded.spec, batch_size=6, augment=True, generator=gen, workers=0)
    )
    eval_x, _ = next(bundle.batches("test", loaded.spec, batch_size=6, workers=0))
    assert train_x.shape == eval_x.shape == (6, 3, 160, 160)
    assert not torch.allclose(train_x, eval_x)


@pytest.mark.parametrize(("name", "published"), [("cifar_resnet20", 0.8103), ("cifar_vit", 0.6831)])
def test_registry_models_keep_their_figures(assets, name, published):
    """The in-memory CIFAR-10 path is unchanged: the figures of the shared README and the ViT's
    JSON card, on all 10,000 test JPEGs."""
    loaded = load_model(name)
    bundle = load_data("cifar10", val=0, calib=0)
    logits, labels = predict(loaded.model, bundle, "test", loaded.spec)
    assert len(labels) == 10_000
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(published, abs=5e-5)
