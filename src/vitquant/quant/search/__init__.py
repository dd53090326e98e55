"""Hyperparameter search for QAT with Optuna: a resumable study on SQLite or PostgreSQL.

The objective is the best int8 accuracy on the *validation* images (drawn from the train split)
over a trial's epochs; the test split is never looked at here. The value of each trained epoch
is reported to the pruner (median pruning by default); ``objective`` says which and why.

Resume and sharing:

- the study lives in Optuna's RDB storage (``sqlite:///DIR/search.db`` by default, or any
  ``postgresql://`` URL that several worker processes or machines share); re-running the same
  command loads it and runs only the trials still missing, so no finished trial is lost;
- ``trials`` is the number of *finished* trials (complete or pruned) the study should hold. A
  lock held while counting and creating a trial (an advisory lock on PostgreSQL, a file lock
  beside a SQLite file) makes concurrent workers stop at exactly that number;
- a trial left RUNNING by a dead process is marked FAIL: at once when the process ran on this
  host (its pid and start time are recorded on the trial), otherwise when its heartbeat is older
  than ``grace_period`` (Optuna's ``fail_stale_trials``).

Each trial seeds its own TPE sampler with ``seed + trial number``, so parallel workers do not
draw the same parameters. One concept per module:

- ``config``: ``SearchSpace``, ``SearchConfig``, ``WorkerReport``;
- ``urls``: SQLite and PostgreSQL URLs; ``storage``: opening the study;
- ``workers``: liveness of the workers and ``StudyLock``;
- ``run``: ``run_search`` and the summary of a study;
- ``objective``: ``QATObjective``, the QAT trial that ``vitquant search`` and the pipeline share.
"""

from vitquant.quant.search.config import FINISHED, SearchConfig, SearchSpace, WorkerReport
from vitquant.quant.search.objective import FIRST_REPORTED_EPOCH, QATObjective
from vitquant.quant.search.run import TrainFn, config_dict, counts, run_search, summarize
from vitquant.quant.search.storage import make_storage, open_study, trial_sampler
from vitquant.quant.search.urls import driver_url, redact, sqlite_url
from vitquant.quant.search.workers import StudyLock, fail_dead_trials, worker_identity

__all__ = [
    "FINISHED",
    "FIRST_REPORTED_EPOCH",
    "QATObjective",
    "SearchConfig",
    "SearchSpace",
    "StudyLock",
    "TrainFn",
    "WorkerReport",
    "config_dict",
    "counts",
    "driver_url",
    "fail_dead_trials",
    "make_storage",
    "open_study",
    "redact",
    "run_search",
    "sqlite_url",
    "summarize",
    "trial_sampler",
    "worker_identity",
]
