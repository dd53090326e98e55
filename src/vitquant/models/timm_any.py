"""``timm:<name>``: any timm model, with its input size, normalisation and evaluation transform
from timm's own data config."""

from __future__ import annotations

import timm
from torch import nn

from vitquant.errors import VitquantError


def timm_spec(timm_name: str, *, num_classes: int | None = None):
    from vitquant.registry import ModelSpec

    if not timm.is_model(timm_name):
        import difflib

        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join('timm:' + c for c in close)}?" if close else ""
        raise VitquantError(f"timm has no model {timm_name!r}.{hint}")
    from timm.data import resolve_data_config

    cfg = timm.get_pretrained_cfg(timm_name)
    cfg = cfg.to_dict() if cfg is not None else {}
    # What `resolve_data_config(model=m)` gives for the built model: input size, interpolation,
    # crop_pct, crop_mode, mean and std - the inputs of timm's own evaluation transform.
    data_config = resolve_data_config(pretrained_cfg=cfg)
    n = num_classes or cfg.get("num_classes") or 1000
    family = "vit" if any(k in timm_name for k in ("vit", "deit", "beit", "eva", "swin")) else "cnn"
    return ModelSpec(
        name=f"timm:{timm_name}",
        family=family,
        build=lambda k, _n=timm_name: timm.create_model(_n, pretrained=False, num_classes=k),
        input_size=tuple(data_config["input_size"]),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        classes=tuple(f"class_{i}" for i in range(n)),
        description=f"timm model {timm_name}",
        timm_name=timm_name,
        extra={"any_classes": True, "data_config": data_config},
    )


def build_pretrained(spec) -> nn.Module:
    """timm's pretrained weights from the hub; a clear message when offline."""
    try:
        return timm.create_model(spec.timm_name, pretrained=True, num_classes=spec.num_classes)
    except Exception as exc:
        raise VitquantError(
            f"could not download pretrained weights for {spec.name} ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Offline? Pass --checkpoint PATH instead."
        ) from exc
