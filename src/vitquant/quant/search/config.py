"""The search space, how the study runs, and what one worker did."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from vitquant.errors import VitquantError

FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges Optuna samples; ``lr`` and ``weight_decay`` on a log scale.

    Attributes:
        lr: learning-rate range (log).
        momentum: SGD momentum range (linear).
        weight_decay: weight-decay range (log).
        epochs: an inclusive epoch range to search too, or None to keep the base recipe's.
    """

    lr: tuple[float, float] = (1e-5, 3e-2)
    momentum: tuple[float, float] = (0.8, 0.99)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    epochs: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "epochs"):
            lo_hi = getattr(self, name)
            if lo_hi is None:
                continue
            lo, hi = lo_hi
            if not lo <= hi:
                raise VitquantError(f"search range of {name} must be low <= high (got {lo_hi}).")
            if name in ("lr", "weight_decay") and lo <= 0:
                raise VitquantError(f"search range of {name} is log-scaled: both ends must be > 0.")
            if name == "epochs" and lo < 1:
                raise VitquantError(f"--search-epochs must start at >= 1 (got {lo_hi}).")
            if name == "momentum" and not (0 <= lo and hi < 1):
                raise VitquantError(f"momentum range must lie in [0, 1) (got {lo_hi}).")

    def suggest(self, trial) -> dict:
        """Sample one set of parameters from ``trial``."""
        params = {
            "lr": trial.suggest_float("lr", *self.lr, log=True),
            "momentum": trial.suggest_float("momentum", *self.momentum),
            "weight_decay": trial.suggest_float("weight_decay", *self.weight_decay, log=True),
        }
        if self.epochs is not None:
            params["epochs"] = trial.suggest_int("epochs", *self.epochs)
        return params


@dataclass(frozen=True)
class SearchConfig:
    """How the study runs.

    Attributes:
        trials: finished trials (complete + pruned) the study should hold.
        study: study name inside the storage.
        storage: an SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://user@host/db``).
        space: the search space.
        prune: median pruning on per-epoch reports.
        pruner_startup: trials that finish before pruning starts.
        pruner_warmup: no trial is pruned at a reported epoch below this one (Optuna's
            ``n_warmup_steps``; steps are epoch numbers, see ``objective``).
        seed: base seed of the per-trial samplers.
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: a RUNNING trial whose heartbeat is older than this is marked FAIL.
        poll_seconds: how often a worker re-checks while other workers finish the last trials.
    """

    trials: int
    study: str
    storage: str
    space: SearchSpace = SearchSpace()
    prune: bool = True
    pruner_startup: int = 3
    pruner_warmup: int = 0
    seed: int = 0
    heartbeat_interval: int = 20
    grace_period: int = 90
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise VitquantError(f"--trials must be >= 1 (got {self.trials}).")
        if not self.study:
            raise VitquantError("--study must be a non-empty name.")
        if "://" not in self.storage:
            raise VitquantError(
                f"--storage {self.storage!r} is not a database URL; use sqlite:///PATH.db or "
                "postgresql://USER@HOST:PORT/DB."
            )
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise VitquantError("the heartbeat grace period must exceed its interval (>= 1 s).")


@dataclass
class WorkerReport:
    """What one worker did: the trial numbers it ran and the dead trials it marked FAIL."""

    ran: list[int] = field(default_factory=list)
    failed_stale: list[int] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
