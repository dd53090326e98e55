"""Module inventory: the names, types and parameter counts users put into ignore lists."""

from __future__ import annotations

from torch import nn

from vitquant.evaluate import QUANTIZABLE


def layer_table(model: nn.Module) -> list[dict]:
    """One row per named module (the root excluded): name, type, own parameters, quantizable."""
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "params": params,
                "quantizable": isinstance(module, QUANTIZABLE),
            }
        )
    return rows


def quantizable_names(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv modules, in definition order."""
    return [n for n, m in model.named_modules() if n and isinstance(m, QUANTIZABLE)]
