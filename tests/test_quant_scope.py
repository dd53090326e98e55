"""Ignore lists: names, globs, types and parameter names resolve to the right Linear/Conv layers;
an entry that matches nothing fails with the closest real names."""

from __future__ import annotations

import fnmatch

import pytest
from torch import nn

from vitquant.errors import VitquantError
from vitquant.quant.scope import IgnoreScope
from vitquant.registry import get_spec


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return get_spec("digits_vit").build(10)


def linear_conv(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def test_names_globs_and_types_resolve_to_linear_conv_layers(vit):
    every = linear_conv(vit)
    scope = IgnoreScope.from_cli(["blocks.0.*", "head"], types=["Conv2d"])
    resolved = scope.resolve(vit)
    expected = [n for n in every if fnmatch.fnmatchcase(n, "blocks.0.*") or n == "head"]
    expected += [n for n, m in vit.named_modules() if isinstance(m, nn.Conv2d)]
    assert resolved.modules == [n for n in every if n in expected]  # model order
    assert resolved.matches["head"] == ["head"]
    assert resolved.matches["type:Conv2d"] == ["patch_embed.proj"]
    # a container name covers its Linear/Conv descendants
    block = IgnoreScope(names=("blocks.1",)).resolve(vit).modules
    assert block == [n for n in every if n.startswith("blocks.1.")]
    assert len(block) == 4
    # a type covers every module of that class (fully qualified spelling too)
    linears = IgnoreScope(types=("torch.nn.Linear",)).resolve(vit).modules
    assert linears == [n for n, m in vit.named_modules() if isinstance(m, nn.Linear)]


def test_parameter_names_map_to_their_module_with_a_note(vit):
    resolved = IgnoreScope(names=("blocks.0.attn.proj.weight",)).resolve(vit)
    assert resolved.modules == ["blocks.0.attn.proj"]
    assert resolved.notes == [
        "mapped parameter blocks.0.attn.proj.weight to module blocks.0.attn.proj"
    ]


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (IgnoreScope(names=("blocks.0.atn.qkv",)), "closest: blocks.0.attn.qkv"),
        (IgnoreScope(patterns=("blocks.9.*",)), "matches no layer"),
        (IgnoreScope(types=("Lnear",)), "Did you mean: Linear?"),
        (IgnoreScope(names=("blocks.0.norm1",)), "no Linear/Conv layer"),
        (IgnoreScope(types=("LayerNorm",)), "has no Linear/Conv layer"),
    ],
)
def test_entries_matching_nothing_fail_with_suggestions(vit, scope, message):
    with pytest.raises(VitquantError, match="ignore list does not fit") as info:
        scope.resolve(vit)
    assert message in str(info.value)


def test_all_bad_entries_are_reported_at_once(vit):
    with pytest.raises(VitquantError) as info:
        IgnoreScope(names=("hed", "blocks.0.atn.qkv")).resolve(vit)
    assert "'hed'" in str(info.value) and "'blocks.0.atn.qkv'" in str(info.value)


def test_from_cli_reads_a_file_with_comments_and_type_entries(tmp_path, vit):
    path = tmp_path / "ignore.txt"
    path.write_text(
        "# keep the ends in float\nhead   # classifier\n\ntype:Conv2d\nblocks.2.mlp.*\n"
    )
    scope = IgnoreScope.from_cli(["head"], [], path)
    assert scope.names == ("head",) and scope.types == ("Conv2d",)
    assert scope.patterns == ("blocks.2.mlp.*",)
    assert scope.resolve(vit).modules == [
        "patch_embed.proj",
        "blocks.2.mlp.fc1",
        "blocks.2.mlp.fc2",
        "head",
    ]
    with pytest.raises(VitquantError, match="does not exist"):
        IgnoreScope.from_cli([], [], tmp_path / "missing.txt")
    assert not IgnoreScope.from_cli([], [])
