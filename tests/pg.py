"""A throwaway PostgreSQL server for tests: ``initdb`` a temporary cluster, start it on a free port.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the cluster belongs to
the ``postgres`` user Debian's package creates (else ``nobody``) and its commands run through
``runuser``. A missing PostgreSQL is a failure, never a skip: ``.ci/run`` installs Debian's
``postgresql`` package when ``initdb`` is absent.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def find_pg_bin(name: str) -> str | None:
    """``name`` on PATH, else in the newest ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as(user: str | None, cmd: list[str]) -> subprocess.CompletedProcess:
    if user is not None:
        runuser = shutil.which("runuser")
        cmd = (
            [runuser, "-u", user, "--", *cmd]
            if runuser
            else ["su", user, "-s", "/bin/sh", "-c", " ".join(cmd)]
        )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a fresh cluster; yields ``postgresql://postgres@127.0.0.1:PORT/vitquant``."""
    initdb, pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql "
            "package (`apt-get install -y postgresql`; .ci/run does this)."
        )
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
    root = Path(tempfile.mkdtemp(prefix="vitquant-pg-"))
    data, log = root / "data", root / "server.log"
    if user is not None:
        shutil.chown(root, user=user)
    port = _free_port()
    started = False
    try:
        init = _run_as(
            user,
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        )
        if init.returncode:
            pytest.fail(f"initdb failed: {init.stdout}\n{init.stderr}")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = _run_as(
            user,
            [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
        )
        if start.returncode:
            text = log.read_text() if log.exists() else ""
            pytest.fail(f"pg_ctl start failed: {start.stdout}\n{start.stderr}\n{text}")
        started = True
        _create_database(port, "vitquant")
        yield f"postgresql://postgres@127.0.0.1:{port}/vitquant"
    finally:
        if started:
            _run_as(user, [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def _create_database(port: int, name: str) -> None:
    import psycopg2

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
