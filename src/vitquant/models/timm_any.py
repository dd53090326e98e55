"""``timm:<name>``: any timm model, with its input size and normalisation from timm's config."""

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
    cfg = timm.get_pretrained_cfg(timm_name)
    cfg = cfg.to_dict() if cfg is not None else {}
    n = num_classes or cfg.get("num_classes") or 1000
    family = "vit" if any(k in timm_name for k in ("vit", "deit", "beit", "eva", "swin")) else "cnn"
    return ModelSpec(
        name=f"timm:{timm_name}",
        family=family,
        build=lambda k, _n=timm_name: timm.create_model(_n, pretrained=False, num_classes=k),
        input_size=tuple(cfg.get("input_size", (3, 224, 224))),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        classes=tuple(f"class_{i}" for i in range(n)),
        description=f"timm model {timm_name}",
        timm_name=timm_name,
        extra={"any_classes": True},
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
