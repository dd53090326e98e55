"""Data bundle: sources load with correct labels; roles are seeded, stratified and disjoint."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitquant.data import ImageReadError, check_compatible, interleave, load_data, stratified_subset
from vitquant.errors import VitquantError
from vitquant.registry import get_spec


def test_digits_labels_match_scikit_learn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    bundle = load_data("digits", val=100, calib=50)
    test = bundle.role("test")
    assert len(test) == 360 and len(bundle.pool) == 1437
    # every test image is a digits image with its own label
    flat = {tuple(img.ravel()): int(t) for img, t in zip(ref.images, ref.target, strict=True)}
    for img, label in zip(test.images[:50], test.labels[:50], strict=True):
        assert flat[tuple((img.numpy()[0] * 16).round().ravel())] == int(label)


def test_roles_are_disjoint_and_seeded():
    a = load_data("digits", val=200, calib=100, seed=3)
    b = load_data("digits", val=200, calib=100, seed=3)
    assert np.array_equal(a.val_idx, b.val_idx) and np.array_equal(a.calib_idx, b.calib_idx)
    assert not set(a.val_idx) & set(a.calib_idx)
    assert not set(a.val_idx) & set(a.fit_idx)
    assert len(a.fit_idx) + len(a.val_idx) == len(a.pool)
    c = load_data("digits", val=200, calib=100, seed=4)
    assert not np.array_equal(a.val_idx, c.val_idx)


def test_a_100_image_subset_holds_every_class(assets):
    bundle = load_data("cifar10", limit=100, val=100, calib=100)
    for role in ("test", "val", "calib"):
        counts = np.bincount(bundle.role(role).labels.numpy(), minlength=10)
        assert (counts == 10).all(), (role, counts)


def test_cifar10_labels_follow_class_folders(assets):
    bundle = load_data("cifar10", val=0, calib=0)
    test = bundle.test_split
    assert len(test) == 10_000 and len(bundle.pool) == 50_000
    assert bundle.classes[0] == "airplane" and bundle.classes[9] == "truck"
    # Re-decode a few files with PIL and find them at the index the label says.
    folder = assets / "data" / "cifar10" / "test"
    for cls_idx, cls in [(0, "airplane"), (6, "frog"), (9, "truck")]:
        path = sorted((folder / cls).iterdir())[3]
        pixels = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
        start = cls_idx * 1000  # ImageFolder order: class by class, files sorted
        assert np.array_equal(test.images[start + 3].numpy(), pixels)
        assert int(test.labels[start + 3]) == cls_idx


def _write_folder(root, classes=("a", "b"), per_class=6, split="train"):
    rng = np.random.default_rng(0)
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_image_folder_with_train_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("VITQUANT_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "ds", split="train")
    _write_folder(tmp_path / "ds", split="test", per_class=3)
    bundle = load_data(tmp_path / "ds", val=2, calib=2)
    assert bundle.classes == ("a", "b")
    assert bundle.test_split.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert bundle.notes == []


def test_single_split_folder_draws_roles_disjointly_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("VITQUANT_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "ds", split="val", per_class=10)
    bundle = load_data(tmp_path / "ds", val=4, calib=4)
    assert bundle.sizes() == {"fit": 0, "val": 4, "calib": 4, "test": 12}
    assert "only val/" in bundle.notes[0]
    # test images are the files neither val nor calib took
    used = {bundle.pool.paths[i] for i in (*bundle.val_idx, *bundle.calib_idx)}
    assert len(used) == 8
    assert not used & set(bundle.role("test").paths)


def test_missing_and_empty_folders_fail_clearly(tmp_path):
    with pytest.raises(VitquantError, match="does not exist"):
        load_data(tmp_path / "nothing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(VitquantError, match="holds no images"):
        load_data(tmp_path / "empty")


def test_unreadable_image_is_named_when_its_batch_is_read(tmp_path, monkeypatch):
    """The folder is listed, not decoded: a broken file surfaces when a batch reads it, with its
    name in one line, from a DataLoader worker process as from the main process."""
    monkeypatch.setenv("VITQUANT_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "ds", split="test")
    bad = tmp_path / "ds" / "test" / "b" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    bundle = load_data(tmp_path / "ds", val=0, calib=0)
    spec = get_spec("timm:test_vit", num_classes=2)
    for workers in (0, 2):
        with pytest.raises(ImageReadError, match="broken.jpg") as info:
            for _ in bundle.batches("test", spec, batch_size=4, workers=workers):
                pass
        assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_classes_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VITQUANT_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "ds", split="test", classes=("a", "b", "c"))
    bundle = load_data(tmp_path / "ds", val=0, calib=0)
    with pytest.raises(VitquantError, match="predicts 10 classes but .* has 3"):
        check_compatible(bundle, get_spec("cifar_vit"))


def test_stratified_subset_proportions():
    labels = np.repeat(np.arange(4), [100, 100, 100, 100])
    idx = stratified_subset(labels, 40, seed=0)
    assert np.bincount(labels[idx]).tolist() == [10, 10, 10, 10]
    excluded = stratified_subset(labels, 40, seed=1, exclude=idx)
    assert not set(idx) & set(excluded)


def test_any_prefix_of_a_role_is_stratified():
    labels = np.repeat(np.arange(5), 40)
    idx = stratified_subset(labels, 100, seed=0)
    for k in (5, 10, 25, 50):
        assert np.bincount(labels[idx[:k]], minlength=5).tolist() == [k // 5] * 5
    assert sorted(interleave(np.arange(200), labels)) == list(range(200))


def test_clipped_requests_are_notes(tmp_path, monkeypatch):
    monkeypatch.setenv("VITQUANT_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "ds", split="train", per_class=10)
    _write_folder(tmp_path / "ds", split="test", per_class=3)
    bundle = load_data(tmp_path / "ds", val=4, calib=70, limit=50)
    assert bundle.sizes()["calib"] == 16 and bundle.sizes()["test"] == 6
    assert any("--calib 70 asked, only 16 available" in n for n in bundle.notes)
    assert any("--limit 50 asked, only 6 available" in n for n in bundle.notes)
    assert bundle.describe()["notes"] == bundle.notes
