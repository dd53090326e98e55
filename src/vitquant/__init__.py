"""vitquant: why a Vision Transformer loses accuracy under int8, and the best int8 model.

``import vitquant as vq`` gives one function per command, each taking any ``nn.Module`` and data
as a name (``"digits"``, ``"cifar10"``, a folder) or your own ``(images, labels)`` batches
(``calibration=``, ``val=``, ``test=``, ``train=``), fed to the model as they are::

    vq.load_model, vq.load_data, vq.evaluate, vq.analyze, vq.sensitivity, vq.quantize,
    vq.load_artifact, vq.qat, vq.search, vq.pipeline, vq.compare, vq.report

and the recipes ``StaticPTQ``, ``LowBitPTQ``, ``DynamicPTQ``, ``QuantizeJob``, ``QATConfig``,
``SearchConfig``, ``SearchSpace``, ``PipelineConfig``, ``IgnoreScope``. Every result has
``to_dict()`` (the JSON the command line writes) and ``save(dir)``. Names are imported on first
use, so ``import vitquant`` stays light (no torch).
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> (module, attribute), imported on first access
_LAZY = {
    "load_model": ("vitquant.api.model", "load_model"),
    "load_data": ("vitquant.data.load", "load_data"),
    "evaluate": ("vitquant.api.evaluate", "evaluate"),
    "analyze": ("vitquant.api.analyze", "analyze"),
    "sensitivity": ("vitquant.api.analyze", "sensitivity"),
    "quantize": ("vitquant.api.quantize", "quantize"),
    "load_artifact": ("vitquant.api.quantize", "load_artifact"),
    "Quantized": ("vitquant.api.quantize", "Quantized"),
    "qat": ("vitquant.api.train", "qat"),
    "search": ("vitquant.api.train", "search"),
    "pipeline": ("vitquant.api.flows", "pipeline"),
    "compare": ("vitquant.api.flows", "compare"),
    "report": ("vitquant.api.flows", "report"),
    "StaticPTQ": ("vitquant.quant.configs", "StaticPTQ"),
    "LowBitPTQ": ("vitquant.quant.lowbit.ptq", "LowBitPTQ"),
    "DynamicPTQ": ("vitquant.quant.configs", "DynamicPTQ"),
    "QuantizeJob": ("vitquant.quant.run", "QuantizeJob"),
    "QATConfig": ("vitquant.quant.qat", "QATConfig"),
    "SearchConfig": ("vitquant.quant.search", "SearchConfig"),
    "SearchSpace": ("vitquant.quant.search", "SearchSpace"),
    "PipelineConfig": ("vitquant.pipeline", "PipelineConfig"),
    "IgnoreScope": ("vitquant.quant.scope", "IgnoreScope"),
    "ScoreWeights": ("vitquant.results", "ScoreWeights"),
    "ResultRow": ("vitquant.results", "ResultRow"),
}


class _Package(types.ModuleType):
    """The ``vitquant`` package, whose API functions win over same-named submodules.

    ``evaluate``, ``pipeline``, ``compare`` and ``report`` are both API functions and library
    modules. Importing a submodule normally sets it as an attribute of its package, which would
    replace ``vq.evaluate`` (the function) by ``vitquant.evaluate`` (the module) as soon as any
    code imported it; here that one assignment is skipped, so the attribute stays the function.
    The modules are unaffected (``from vitquant.evaluate import predict`` reads ``sys.modules``).
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

from vitquant.errors import VitquantError  # noqa: E402

__all__ = ["VitquantError", "__version__", *_LAZY]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'vitquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
