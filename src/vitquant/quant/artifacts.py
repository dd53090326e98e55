"""Saving and loading quantized variants: real files on disk.

Artifacts per backend:

- ``pytorch`` fp32 / dynamic: ``torch.save(state_dict)`` (``.pt``); a dynamic model is rebuilt
  by quantizing the float architecture again and loading the saved int8 state into it.
- ``pt2e-x86``: ``torch.export.save`` of the converted program (``.pt2``), int8 weight constants
  included; ``torch.export.load(...).module()`` gives the graph back.
- ``onnxruntime``: the ``.onnx`` file itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from vitquant.io import atomic_write

DYNAMIC_BATCH = torch.export.Dim("batch", min=1, max=65536)


def save_state_dict(model: nn.Module, path: str | Path) -> Path:
    """``torch.save(model.state_dict())`` atomically; returns the path."""
    return atomic_write(Path(path), lambda p: torch.save(model.state_dict(), p))


def save_pt2e(gm: torch.fx.GraphModule, example: torch.Tensor, path: str | Path) -> Path:
    """Re-export a converted pt2e graph (dynamic batch) and ``torch.export.save`` it.

    The archive keeps a sample input, so a 2-image copy is exported (not a view of a whole
    calibration batch, whose storage would be saved); debug metadata (stack traces, node
    provenance) is dropped, so the file size is weights + graph.
    """
    example = example[:2].clone()
    dynamic = ({0: DYNAMIC_BATCH},) if len(example) >= 2 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(gm, (example,), dynamic_shapes=dynamic)
        except Exception:
            if dynamic is None:
                raise
            program = torch.export.export(gm, (example,))
    for node in program.graph.nodes:
        for key in ("stack_trace", "from_node", "source_fn_stack", "torch_fn"):
            node.meta.pop(key, None)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a handle: the temporary name does not end in .pt2
            torch.export.save(program, f)

    return atomic_write(Path(path), write)


def load_pt2e(path: str | Path) -> torch.fx.GraphModule:
    """The graph module of a saved pt2e program (``.eval()`` allowed)."""
    # Registers the quantized_decomposed ops the saved graph calls (before deserializing).
    import torchao.quantization.pt2e._affine_quantization  # noqa: F401
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.load(str(path)).module()
    allow_exported_model_train_eval(gm)
    return gm


def pt2e_weight_dtypes(path: str | Path) -> dict[str, torch.dtype]:
    """Module name -> dtype of the weight its Linear/Conv op reads, read from a saved ``.pt2``."""
    from vitquant.quant.pt2e import weight_dtypes

    return weight_dtypes(load_pt2e(path))


def load_dynamic(
    model: nn.Module, path: str | Path, *, cfg=None, ignore: Iterable[str] = ()
) -> nn.Module:
    """Rebuild a dynamic-int8 model: quantize ``model``'s architecture, load the saved state."""
    from vitquant.quant.configs import DynamicPTQ
    from vitquant.quant.dynamic import quantize_dynamic

    qm = quantize_dynamic(model, cfg or DynamicPTQ(), ignore=list(ignore))
    state = torch.load(str(path), map_location="cpu", weights_only=False)
    qm.module.load_state_dict(state)
    return qm.module
