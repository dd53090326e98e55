"""The pipeline's measurement of one variant: saved to disk, timed, and - for x86 pt2e graphs -
compiled once by inductor so that val, test and latency all run on the int8 kernels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vitquant.evaluate import file_size_mb


def measure_variant(
    variant: str,
    module,
    artifacts: Path,
    examples: dict,
    *,
    lower: bool = True,
    lowered=None,
) -> dict:
    """Save ``module`` under ``artifacts`` and time it: the size and latency fields of a row.

    pt2e graphs are timed after inductor lowering (``lowered``: an already compiled
    ``LoweredModel``; else one is compiled here), ``simulated`` when lowering fails and the eager
    quantize/dequantize emulation is timed instead; eager modules are timed as they are.
    """
    from vitquant.quant.artifacts import (
        lowered_latency,
        measure_latency,
        save_pt2e,
        save_state_dict,
    )
    from vitquant.quant.pt2e import QuantizedModel

    graph = module.module if isinstance(module, QuantizedModel) else module
    if isinstance(graph, torch.fx.GraphModule):
        example = module.example if isinstance(module, QuantizedModel) else examples[32][:8]
        path = save_pt2e(graph, example, artifacts / f"{variant}.pt2")
        if lowered is not None:
            lat, simulated = measure_latency(lowered, examples), False
        elif lower:
            lat, simulated, _, _ = lowered_latency(graph, examples)
            torch._dynamo.reset()
        else:
            lat, simulated = measure_latency(graph, examples), True
    else:
        path = save_state_dict(graph, artifacts / f"{variant}.pt")
        lat, simulated = measure_latency(graph, examples), False
    return {
        "size_mb": file_size_mb(path),
        "artifact": str(path),
        "latency_ms_per_image": lat[1],
        "latency_batch": 1,
        "latency_threads": torch.get_num_threads(),
        "simulated": simulated,
        "batch32": lat[32],
    }


def lowered_runner(module, examples: dict, log: Callable[[str], None]):
    """``(LoweredModel, agreement)`` for an x86 pt2e variant, or ``(None, None)`` when inductor
    cannot compile it. ``agreement`` is the share of a 32-image batch on which the lowered
    model's argmax equals the eager emulation's: the two compute the same int8 arithmetic, up to
    rounding order."""
    from vitquant.quant.lowered import LoweredModel

    try:
        lowered = LoweredModel(module)
        with torch.no_grad():
            x = examples[32]
            agree = (lowered(x).argmax(1) == module(x).argmax(1)).float().mean().item()
        return lowered, agree
    except Exception as exc:  # no compiler, an unsupported pattern, ...
        log(
            f"inductor could not lower this variant ({type(exc).__name__}); measuring the "
            "eager emulation instead"
        )
        return None, None
