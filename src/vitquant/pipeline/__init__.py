"""The whole study as one flow, recording every figure and the reason for every decision.

float evaluation -> analysis (outliers, change scores) -> static PTQ of all layers -> (a low-bit
target over budget: the ViT-aware methods, ``lowbit_steps``) -> static PTQ
keeping the significant outlier layers in float -> accuracy-aware ignore list -> dynamic int8
(PyTorch's eager dynamic for x86; the quantizer's pt2e dynamic config for xnnpack) ->
(if the best post-training val drop is still above ``max_drop``) QAT with an Optuna search ->
final choice.

- ``config``: ``PipelineConfig`` (the recipe) and the ranking rule of the ignore-list search.
- ``steps``: one function per step; each returns its measured rows and its ``Decision``.
- ``context``: what the steps share; a step's model becomes a row through one ``Measurer``
  (``vitquant.measure``), on val (every choice) and test (reported figures).
- ``choose``: the final rule (speed only beyond the latency spread, then size, then int8
  layers; a simulated row never wins on speed or size).
- ``flow``: the flow diagram's nodes, read off the decisions.
- ``run``: ``run_pipeline`` runs the steps in order.
"""

from vitquant.pipeline.choose import Choice, choose_final, val_drop_pts
from vitquant.pipeline.config import RANKING_BUDGET_S, PipelineConfig, ranking_method
from vitquant.pipeline.decision import Decision, StepResult
from vitquant.pipeline.flow import flow_nodes
from vitquant.pipeline.run import STEPS, PipelineRun, run_pipeline
from vitquant.pipeline.steps import significant_modules

__all__ = [
    "RANKING_BUDGET_S",
    "STEPS",
    "Choice",
    "Decision",
    "PipelineConfig",
    "PipelineRun",
    "StepResult",
    "choose_final",
    "flow_nodes",
    "ranking_method",
    "run_pipeline",
    "significant_modules",
    "val_drop_pts",
]
