"""Several workers on one study: who is still alive, and the lock that keeps the count exact.

A trial left RUNNING by a dead process is marked FAIL: at once when the process ran on this host
(its pid and start time are recorded on the trial), otherwise when its heartbeat is older than
``grace_period`` (Optuna's ``fail_stale_trials``). ``StudyLock`` is held while a worker counts
the trials and creates one, so concurrent workers stop at exactly the target.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

from vitquant.errors import VitquantError
from vitquant.quant.search.urls import driver_url, redact, sqlite_path


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
                    f"cannot connect to {redact(storage_url)}: {first}. Check the URL, that "
                    "the server runs and the database exists."
                ) from exc
        elif storage_url.startswith("sqlite"):
            path = sqlite_path(storage_url)
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
