"""Registry: every entry builds with the right output shape, loads strictly, errors are clear."""

from __future__ import annotations

import pytest
import torch

from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.registry import get_spec, list_specs, load_model


@pytest.mark.parametrize("spec", list_specs(), ids=lambda s: s.name)
def test_every_entry_builds_with_the_right_output_shape(spec):
    model = spec.build(spec.num_classes).eval()
    x = torch.randn(2, *spec.input_size)
    with torch.no_grad():
        assert model(x).shape == (2, spec.num_classes)


@pytest.mark.parametrize("spec", list_specs(), ids=lambda s: s.name)
def test_every_entry_loads_its_checkpoint(spec, assets, digits_models):
    loaded = load_model(spec.name)
    assert loaded.checkpoint.endswith(spec.checkpoint)
    # The loaded weights are the file's, not the random init.
    fresh = spec.build(spec.num_classes).state_dict()
    name, tensor = next((k, v) for k, v in loaded.model.state_dict().items() if v.ndim > 1)
    assert not torch.equal(tensor, fresh[name])


def test_resnet20_scores_like_a_trained_model(assets):
    """Random weights score ~10%; the shared README states 81.03% on all 10,000 test images."""
    loaded = load_model("cifar_resnet20")
    bundle = load_data("cifar10", limit=1000, calib=0, val=0)
    assert accuracy(loaded.model, bundle, "test", loaded.spec) >= 0.78


@pytest.mark.parametrize("name", ["digits_vit", "digits_cnn"])
def test_digits_models_reach_95_percent(name, digits_models):
    loaded = load_model(name)
    bundle = load_data("digits")
    assert accuracy(loaded.model, bundle, "test", loaded.spec) >= 0.95


def test_timm_entry_has_deit_layer_names():
    loaded = load_model("timm:deit_small_patch16_224", random_weights=True, num_classes=10)
    names = dict(loaded.model.named_modules())
    assert {"blocks.0.attn.qkv", "blocks.11.mlp.fc2", "head"} <= set(names)
    assert loaded.spec.input_size == (3, 224, 224)
    assert loaded.checkpoint == "random"


def test_unknown_model_suggests_close_names():
    with pytest.raises(VitquantError, match="Did you mean: cifar_vit"):
        get_spec("cifar_vt")


def test_missing_checkpoint_says_where_it_looked(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(VitquantError, match=f"not found at {missing}"):
        load_model("digits_cnn", checkpoint=missing)


def test_state_dict_mismatch_lists_keys(tmp_path, digits_models):
    path = tmp_path / "wrong.pt"
    torch.save(load_model("digits_vit").model.state_dict(), path)
    with pytest.raises(
        VitquantError, match=r"missing keys \(17\): bn1\.bias.*unexpected keys \(44\): blocks\.0"
    ):
        load_model("digits_cnn", checkpoint=path)


def test_timm_pretrained_offline_fails_clearly(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(VitquantError, match="Offline\\? Pass --checkpoint PATH"):
        load_model("timm:deit_tiny_patch16_224", pretrained=True)


def test_a_timm_head_of_another_size_suggests_num_classes(tmp_path):
    import timm

    from vitquant.errors import HeadMismatchError

    path = tmp_path / "resnet10t_1000.pt"
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), path)
    with pytest.raises(HeadMismatchError) as caught:
        load_model("timm:resnet10t", checkpoint=path, num_classes=10)
    err = caught.value
    assert (err.key, err.shape, err.checkpoint_classes, err.model_classes) == (
        "fc.weight",
        (1000, 512),
        1000,
        10,
    )
    assert str(err) == (
        f"checkpoint {path} has a 1000-class head (fc.weight 1000x512) but the model is built "
        "for 10 classes; pass --num-classes 1000 with data of 1000 classes, or a checkpoint for "
        "10 classes."
    )
    assert "the data has 10 classes; pass --num-classes 1000" in str(err.for_data(10))
    assert load_model("timm:resnet10t", checkpoint=path, num_classes=1000).checkpoint == str(path)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ([1, 2], "holds an object of type list, not a state_dict"),
        ({"w": torch.zeros(1), "step": 3}, "('step' holds an object of type int); save"),
    ],
)
def test_files_that_are_not_state_dicts_are_named(tmp_path, content, says):
    from vitquant.registry import read_state_dict

    path = tmp_path / "x.pt"
    torch.save(content, path)
    with pytest.raises(VitquantError) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value) and says in str(caught.value)
    assert "\n" not in str(caught.value)
