"""Hyperparameter search for QAT with Optuna: a resumable study on SQLite or PostgreSQL.

The objective is the best int8 accuracy on the *validation* images (drawn from the train split)
over a trial's epochs; the test split is never looked at here. Each epoch's value is reported to
the pruner (median pruning by default).

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
draw the same parameters.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
        pruner_warmup: epochs of each trial never pruned.
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


# --------------------------------------------------------------------------- storage


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def driver_url(url: str) -> str:
    """``url`` with an explicit PostgreSQL driver: psycopg2 unless psycopg (3) is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; vitquant ships psycopg2-binary.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        return f"postgresql+{driver}://" + url.split("://", 1)[1]
    return url


def make_storage(cfg: SearchConfig):
    """Optuna's RDB storage for ``cfg.storage`` with heartbeats on."""
    import optuna

    engine_kwargs = {}
    if cfg.storage.startswith("sqlite"):
        path = _sqlite_path(cfg.storage)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                driver_url(cfg.storage),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
            )
    except Exception as exc:  # connection refused, unknown driver, bad URL, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VitquantError(
            f"cannot open the study storage {_redact(cfg.storage)}: {first}. Check the URL, that "
            "the server runs and the database exists (PostgreSQL needs psycopg2-binary)."
        ) from exc


def _redact(url: str) -> str:
    """The URL without a password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _sqlite_path(url: str) -> Path | None:
    rest = url.split("://", 1)[1]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:]) if rest.startswith("/") else None


def open_study(cfg: SearchConfig, identity: dict):
    """Create or load the study; refuse one that was created for another model/data/space.

    Args:
        cfg: the search config.
        identity: what must match for trials to be comparable (model, data, base recipe, space).
    """
    import json

    import optuna

    identity = json.loads(json.dumps(identity))  # as stored: tuples become lists
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup, n_warmup_steps=cfg.pruner_warmup
        )
        if cfg.prune
        else optuna.pruners.NopPruner()
    )
    # Workers starting together on a fresh database would race creating Optuna's tables.
    lock = StudyLock(cfg.storage, "vitquant-open-storage")
    try:
        with lock.holding():
            storage = make_storage(cfg)
            study = optuna.create_study(
                study_name=cfg.study,
                storage=storage,
                direction="maximize",
                pruner=pruner,
                sampler=_sampler(cfg, 0),
                load_if_exists=True,
            )
            saved = study.user_attrs.get("vitquant")
            if saved is None:
                study.set_user_attr("vitquant", identity)
    finally:
        lock.close()
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise VitquantError(f"study {cfg.study!r} exists and minimizes; use another --study.")
    if saved is not None and saved != identity:
        diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise VitquantError(
            f"study {cfg.study!r} in {_redact(cfg.storage)} was created with other settings "
            f"({', '.join(diff)} differ: {[saved.get(k) for k in diff]} there). Repeat the "
            "original options to resume it, or pass another --study name."
        )
    return study


def _sampler(cfg: SearchConfig, trial_number: int):
    import optuna

    startup = max(2, min(10, cfg.trials // 3))
    return optuna.samplers.TPESampler(
        seed=cfg.seed * 1_000_003 + trial_number, n_startup_trials=startup
    )


# --------------------------------------------------------------------------- liveness


def _proc_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def worker_identity() -> dict:
    """Host, pid and process start time: enough to tell later whether this process still runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid)}


def _alive(worker: dict) -> bool:
    pid = int(worker["pid"])
    start = _proc_start(pid)
    if start is not None:
        return worker.get("start") in (None, start)  # a reused pid has another start time
    if Path("/proc").is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; returns their numbers.

    Trials started on this host are checked by pid at once; the others by Optuna's heartbeat
    (``fail_stale_trials``: no heartbeat for ``grace_period`` seconds).
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and worker.get("host") == host and not _alive(worker):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                failed.append(t.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(set(failed) | (after - before))


# --------------------------------------------------------------------------- locking


def _lock_key(study: str) -> int:
    return int.from_bytes(hashlib.sha1(f"vitquant:{study}".encode()).digest()[:8], "big") >> 1


class StudyLock:
    """A cross-process lock per study: PostgreSQL advisory lock, or a file lock for SQLite.

    Released automatically when the process dies (the connection or file closes). Other
    databases get no lock (concurrent workers may then run one trial too many).
    """

    def __init__(self, storage_url: str, study: str):
        self._url, self._key = storage_url, _lock_key(study)
        self._conn = self._file = None
        self.held = False
        if storage_url.startswith("postgresql"):
            import sqlalchemy

            try:
                engine = sqlalchemy.create_engine(
                    driver_url(storage_url), poolclass=sqlalchemy.pool.NullPool
                )
                self._conn = engine.connect()
            except Exception as exc:  # driver missing, server down, bad credentials, ...
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise VitquantError(
                    f"cannot connect to {_redact(storage_url)}: {first}. Check the URL, that "
                    "the server runs and the database exists."
                ) from exc
        elif storage_url.startswith("sqlite"):
            path = _sqlite_path(storage_url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(f"{path}.{self._key:x}.lock", "a+b")  # noqa: SIM115

    def acquire(self) -> None:
        if self.held:
            return
        if self._conn is not None:
            import sqlalchemy

            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        elif self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        if self._conn is not None:
            import sqlalchemy

            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()
        elif self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self.release()
        if self._conn is not None:
            self._conn.close()
        if self._file is not None:
            self._file.close()

    @contextlib.contextmanager
    def holding(self) -> Iterator[StudyLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


# --------------------------------------------------------------------------- the loop

# train_fn(params, report) -> (value, user_attrs); report(epoch, value) may raise TrialPruned.
TrainFn = Callable[[dict, Callable[[int, float], None]], tuple[float, dict]]


def counts(study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def run_search(
    study,
    cfg: SearchConfig,
    train_fn: TrainFn,
    *,
    log: Callable[[str], None] = print,
) -> WorkerReport:
    """Run trials until the study holds ``cfg.trials`` finished ones (this worker's share).

    Several workers may run this on one study at once; the count is exact (see ``StudyLock``).
    A worker whose count is reached while other workers' trials still run waits for them, so
    when it returns the study is complete (or holds only trials of workers that died, marked
    FAIL once their heartbeat goes stale).
    """
    import optuna

    report = WorkerReport()
    lock = StudyLock(cfg.storage, cfg.study)

    def objective(trial) -> float:
        trial.set_user_attr("worker", worker_identity())
        lock.release()  # the trial is RUNNING in the storage: other workers count it now
        trial.study.sampler = _sampler(cfg, trial.number)
        params = cfg.space.suggest(trial)
        report.ran.append(trial.number)
        log(f"trial {trial.number}: {_fmt(params)}")
        t0 = time.perf_counter()

        def on_epoch(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if cfg.prune and trial.should_prune():
                log(f"trial {trial.number}: pruned after epoch {epoch} (val {value:.4f})")
                raise optuna.TrialPruned()

        value, attrs = train_fn(params, on_epoch)
        for key, val in attrs.items():
            trial.set_user_attr(key, val)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        log(f"trial {trial.number}: int8 val {value:.4f} ({time.perf_counter() - t0:.0f} s)")
        return value

    try:
        while True:
            with lock.holding():
                report.failed_stale += fail_dead_trials(study)
                n = counts(study)
                finished = sum(n.get(s, 0) for s in FINISHED)
                running = n.get("RUNNING", 0)
                if finished >= cfg.trials:
                    break
                start = finished + running < cfg.trials
                if start:
                    # The objective releases the lock once its trial exists (RUNNING).
                    study.optimize(objective, n_trials=1, gc_after_trial=True)
            if not start:
                time.sleep(cfg.poll_seconds)  # others run the last trials; wait for them
    finally:
        lock.close()
    return report


def _fmt(params: dict) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


# --------------------------------------------------------------------------- summary


def summarize(study) -> dict:
    """Every trial (number, state, params, value, worker, per-epoch values) and the best one."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "worker": t.user_attrs.get("worker"),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "seconds": t.user_attrs.get("seconds"),
                "started": t.datetime_start.isoformat() if t.datetime_start else None,
                "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": dict(b.params)}
    return {"study": study.study_name, "counts": counts(study), "trials": trials, "best": best}


def config_dict(cfg: SearchConfig) -> dict:
    out = asdict(cfg)
    out["storage"] = _redact(cfg.storage)
    return out
