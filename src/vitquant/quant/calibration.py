"""Calibrate once, quantize many ignore lists: observer states keyed by what they observe.

During pt2e calibration the prepared graph computes in float: observers only record. So the
range an observer records for a tensor does not depend on which *other* layers are quantized,
and an ignore list only removes observers. The accuracy-aware search quantizes the same model
with many ignore lists; instead of re-running the calibration images through each, it
calibrates the graph with the fewest layers ignored once, keeps every observer's state under the
name of the graph node it observes (export names nodes deterministically: ``linear_3``,
``blocks_0_attn_qkv_weight``, ...), and loads those states into each new prepared graph.

A prepared graph with an observer whose node is not in the cache (or whose observer type
differs) is calibrated on images as usual, so the shortcut never changes a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def observer_nodes(prepared: torch.fx.GraphModule) -> dict[str, torch.nn.Module]:
    """``{observed node name: observer module}`` of a prepared pt2e graph."""
    out = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        module = prepared.get_submodule(node.target)
        if _is_observer(module) and isinstance(node.args[0], torch.fx.Node):
            out[node.args[0].name] = module
    return out


def _is_observer(module: torch.nn.Module) -> bool:
    from torchao.quantization.pt2e import ObserverBase

    return isinstance(module, ObserverBase)


@dataclass
class CalibrationCache:
    """Observer states of one calibrated graph, by observed node name."""

    states: dict[str, tuple[type, dict]] = field(default_factory=dict)

    @classmethod
    def from_prepared(cls, prepared: torch.fx.GraphModule) -> CalibrationCache:
        """Snapshot the observers of a calibrated (not yet converted) graph."""
        return cls(
            {
                name: (type(obs), {k: v.clone() for k, v in obs.state_dict().items()})
                for name, obs in observer_nodes(prepared).items()
            }
        )

    def load_into(self, prepared: torch.fx.GraphModule) -> bool:
        """Give every observer of ``prepared`` its cached state; False (nothing loaded) when
        one of them is not covered, so the caller calibrates on images instead."""
        observers = observer_nodes(prepared)
        if not observers or any(
            name not in self.states or type(obs) is not self.states[name][0]
            for name, obs in observers.items()
        ):
            return False
        for name, obs in observers.items():
            obs.load_state_dict(self.states[name][1])
        return True
