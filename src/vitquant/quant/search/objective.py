"""The QAT search objective, one for ``vitquant search`` and the pipeline's QAT step.

A trial is one ``run_qat`` of the base recipe with the trial's parameters (drawn by
``run_search`` from ``SearchConfig.space``) replacing its fields. The trial's value is the run's
best int8 validation accuracy over epochs ``0..E`` (``QATResult.best_val``): the calibrated model
before any update is kept when no trained epoch beats it, so it is a candidate too.

What the pruner sees: each *trained* epoch ``e = 1..E`` is reported as step ``e`` with value
``history[e]["int8_val_acc"]``, as soon as that epoch has been evaluated. Epoch 0 is not
reported, because

- it is the calibrated model before any optimizer step, so the searched parameters (learning
  rate, momentum, weight decay, epochs) cannot change it: every trial of a study shows the same
  value there, which tells the pruner nothing about the trial;
- Optuna's median (percentile) pruner compares a trial's *best* value reported so far with the
  other trials' values at the current step; a reported epoch 0 would put a floor under every
  trial at the PTQ accuracy, so a trial whose training falls below it would be judged by the
  value it had before training and escape pruning.

So a trial's value can exceed every value it reported (when epoch 0 is its best epoch). An epoch
whose loss is not finite ends ``run_qat`` before it is reported. ``SearchConfig.pruner_warmup``
counts in the same step numbers: no trial is pruned at an epoch below it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing torch is left to the first trial: the search bookkeeping needs none
    from torch import nn

    from vitquant.data import DataBundle
    from vitquant.quant.qat import QATConfig, QATResult

FIRST_REPORTED_EPOCH = 1  # epoch 0 (calibrated, untrained) is never reported; see above


class QATObjective:
    """``train_fn`` of ``run_search`` for QAT: ``objective(params, report) -> (value, attrs)``.

    Args:
        model: the float model (not modified).
        spec: its ``ModelSpec``.
        bundle: data; trains on ``fit``, selects on ``val`` (never ``test``).
        base: the recipe every trial starts from; a trial's parameters replace its fields.
        ignore: quantizable module names to keep in float.
        keep_results: keep each trial's ``QATResult`` (its models included) in memory, so that
            ``result(params)`` returns it instead of a retraining; costs one model per trial.
        log: where ``run_qat``'s progress lines go (default: nowhere).
    """

    def __init__(
        self,
        model: nn.Module,
        spec,
        bundle: DataBundle,
        base: QATConfig,
        *,
        ignore: Sequence[str] = (),
        keep_results: bool = False,
        log: Callable[[str], None] = lambda s: None,
    ):
        self.model, self.spec, self.bundle, self.base = model, spec, bundle, base
        self.ignore = list(ignore)
        self.keep_results = keep_results
        self.log = log
        self._results: dict[tuple, QATResult] = {}

    def config(self, params: dict) -> QATConfig:
        """The recipe of a trial with ``params``."""
        return replace(self.base, **params)

    def __call__(self, params: dict, report: Callable[[int, float], None]) -> tuple[float, dict]:
        """Run one trial; ``report(epoch, int8_val_acc)`` after each trained epoch.

        ``report`` may raise ``optuna.TrialPruned``; the run then stops there and it propagates.

        Returns:
            The best int8 validation accuracy over epochs 0..E, and the trial's user attributes:
            ``best_epoch`` and ``history`` (``QATResult.history``).
        """

        from vitquant.quant.qat import run_qat

        def on_epoch(epoch: int, record: dict, _prepared: nn.Module) -> None:
            if epoch >= FIRST_REPORTED_EPOCH:
                report(epoch, record["int8_val_acc"])

        result = run_qat(
            self.model,
            self.spec,
            self.bundle,
            self.config(params),
            ignore=self.ignore,
            on_epoch=on_epoch,
            log=self.log,
        )
        if self.keep_results:
            self._results[_key(params)] = result
        return result.best_val, {"best_epoch": result.best_epoch, "history": result.history}

    def result(self, params: dict) -> QATResult | None:
        """The kept result of a trial this objective ran with ``params`` (None: not kept)."""
        return self._results.get(_key(params))


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))
