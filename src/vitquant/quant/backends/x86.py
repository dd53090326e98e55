"""x86: torchao's ``X86InductorQuantizer``, lowered by inductor to oneDNN int8 kernels.

Its artifact is the converted program itself (``torch.export.save``, ``.pt2``); ``lower``
compiles the graph with inductor (``vitquant.quant.lowered``), so the runner that is measured
and timed is the int8 one. Its dynamic path is PyTorch's eager ``quantize_dynamic``
(``vitquant.quant.dynamic``), whose rows are labelled ``pytorch``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitquant.quant.backends.base import Backend, Exported, Lowered


def quantization_config(
    *,
    per_channel: bool = True,
    symmetric_activations: bool = False,
    observer: str = "minmax",
    percentile: float = 99.99,
    is_qat: bool = False,
    is_dynamic: bool = False,
):
    """A pt2e ``QuantizationConfig`` for int8 weights and (u)int8 activations.

    Weights: int8 symmetric, per output channel (axis 0) or per tensor. Activations: uint8
    asymmetric (x86 default) or int8 symmetric, range from ``observer``. QAT swaps observers for
    fake-quantize modules (moving-average ranges); dynamic uses run-time activation ranges.
    """
    from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torchao.quantization.pt2e.observer import (
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
        PlaceholderObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    from vitquant.quant.observers import observer_class

    eps = 2**-12
    if symmetric_activations:
        act_kw = dict(
            dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric
        )
    else:
        act_kw = dict(
            dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine
        )
    if is_dynamic:
        act_ctr = PlaceholderObserver.with_args(eps=eps)
    elif is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, eps=eps
        )
    else:
        obs_cls, obs_kw = observer_class(observer, percentile)
        act_ctr = obs_cls.with_args(eps=eps, **obs_kw)
    act = QuantizationSpec(**act_kw, is_dynamic=is_dynamic, observer_or_fake_quant_ctr=act_ctr)

    if per_channel:
        w_kw = dict(qscheme=torch.per_channel_symmetric, ch_axis=0)
        w_obs = MovingAveragePerChannelMinMaxObserver if is_qat else PerChannelMinMaxObserver
    else:
        w_kw = dict(qscheme=torch.per_tensor_symmetric)
        w_obs = MovingAverageMinMaxObserver if is_qat else MinMaxObserver
    if is_qat:
        w_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=w_obs, eps=eps)
    else:
        w_ctr = w_obs.with_args(eps=eps)
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        is_dynamic=False,
        observer_or_fake_quant_ctr=w_ctr,
        **w_kw,
    )
    return QuantizationConfig(act, act, weight, None, is_qat)


def lowering_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters of message."""
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


class X86Backend(Backend):
    name = "x86"
    label = "pt2e-x86"
    runtime = "pytorch"
    suffix = ".pt2"
    default_observer = "minmax"
    lowers = True
    dynamic_label = "pytorch"
    #: precision of the operators left in float when lowered (``lowered.FLOAT_OPS``); the CLI's
    #: ``--x86-float`` sets it for the process.
    float_ops = "auto"
    #: compile with inductor's C++ wrapper (``--x86-cpp-wrapper``)
    cpp_wrapper = False

    def make_quantizer(self, ignore: list[str], *, default_bits=None, layer_bits=None, **options):
        """torchao's ``X86InductorQuantizer`` with ``quantization_config(**options)``; ``ignore``
        modules get ``set_module_name_qconfig(name, None)`` (left unannotated, so float).

        ``default_bits`` / ``layer_bits`` (``BitSetting``, and layer name -> ``BitSetting``)
        narrow the config's ranges (``lowbit.narrow``), globally and per layer.
        """
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
        )

        from vitquant.quant.lowbit.narrow import narrow_config

        config = quantization_config(**options)
        quantizer = X86InductorQuantizer()
        quantizer.set_global(narrow_config(config, default_bits) if default_bits else config)
        for name, setting in (layer_bits or {}).items():
            quantizer.set_module_name_qconfig(name, narrow_config(config, setting))
        for name in ignore:
            quantizer.set_module_name_qconfig(name, None)
        return quantizer

    def lower(self, graph, *, enabled: bool = True, probe: torch.Tensor | None = None) -> Lowered:
        """Inductor-compiled int8 graph (``LoweredModel``), else the eager emulation.

        ``probe`` (a batch) is run at its size and at batch 1, so both shapes compile here and
        a failure falls back to the emulation (``simulated``, ``extra.lowering_error``); the
        share of ``probe`` on which lowered and eager argmax agree is
        ``extra.lowered_vs_eager_agreement``; ``extra.float_ops`` says whether the operators left
        in float ran in bf16 or fp32 (``self.float_ops``, ``"auto"`` by default). A dynamic
        eager model runs int8 kernels as it is.
        """
        if not isinstance(graph, torch.fx.GraphModule):  # eager dynamic int8 (fbgemm/oneDNN)
            return Lowered(runner=graph, simulated=False)
        if not enabled:
            return Lowered(graph, True, {"timed": "eager quantize/dequantize emulation"})
        from vitquant.quant.lowered import LoweredModel

        try:
            lowered = LoweredModel(graph, float_ops=self.float_ops, cpp_wrapper=self.cpp_wrapper)
            timed = "inductor-lowered int8"
            if lowered.float_ops == "bf16":
                timed += ", float ops in bf16"
            if self.cpp_wrapper:
                timed += ", C++ wrapper"
            extra: dict = {"timed": timed, "float_ops": lowered.float_ops}
            if probe is not None:
                with torch.no_grad():
                    lowered(probe[:1])
                    same = lowered(probe).argmax(1) == graph(probe).argmax(1)
                extra["lowered_vs_eager_agreement"] = same.float().mean().item()
            return Lowered(runner=lowered, simulated=False, extra=extra)
        except Exception as exc:  # inductor missing a compiler, unsupported pattern, ...
            return Lowered(
                runner=graph,
                simulated=True,
                extra={"timed": "eager (lowering failed)", "lowering_error": lowering_error(exc)},
            )

    def export(self, qm, path: str | Path, **context) -> Exported:
        """``torch.export.save`` of the converted program (int8 weight constants inside)."""
        from vitquant.quant.artifacts import save_pt2e

        saved = save_pt2e(qm.module, qm.example, path)
        return Exported(saved, list(qm.int8_layers), list(qm.float_layers), list(qm.ignored))

    def load(self, path: str | Path, *, threads: int | None = None):
        """The saved graph, eager (``lower`` compiles it)."""
        return self.load_graph(path)

    def quantize_dynamic(self, model, *, example=None, cfg=None, per_channel=True, ignore=()):
        """PyTorch's eager dynamic int8 (``torch.ao.quantization.quantize_dynamic``)."""
        from vitquant.quant.dynamic import quantize_dynamic

        if cfg is None:
            from vitquant.quant.configs import DynamicPTQ

            cfg = DynamicPTQ()
        return quantize_dynamic(model, cfg, ignore=ignore)

    def save(self, qm, path: str | Path) -> Path:
        """A converted graph as ``.pt2``; an eager dynamic model as its state dict (``.pt``)."""
        if isinstance(qm.module, torch.fx.GraphModule):
            return super().save(qm, path)
        from vitquant.quant.artifacts import save_state_dict

        return save_state_dict(qm.module, Path(path).with_suffix(".pt"))
