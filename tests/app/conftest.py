"""Fixtures of the feedback app's tests: a database on each backend, a migrated store, a samples file.

``db_url`` runs a test twice: on a SQLite file and on a fresh PostgreSQL database. PostgreSQL is the
server on 127.0.0.1:5432 (trust authentication, as user ``postgres`` or ``root``); where none
answers, a throwaway server from Debian's ``postgresql`` package is started for the session
(``initdb`` in a temporary folder, listening on a free loopback port); where neither is possible,
the PostgreSQL half of each test is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from argon2 import PasswordHasher

# The server to use; RLHFLAB_TEST_POSTGRES=HOST:PORT points elsewhere (a port with no server there
# exercises the throwaway-server fallback).
PG_HOST, _, _port = os.environ.get("RLHFLAB_TEST_POSTGRES", "127.0.0.1:5432").partition(":")
PG_PORT = int(_port)
PG_USERS = ("postgres", "root")
PG_DATABASES = ("postgres", "test", "root")
# Cheap hashing: tests create many users; production keeps argon2's (slow, on purpose) defaults.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"

SAMPLES = [
    {"prompt": "Say hello.", "completions": ["Hello there!", "Go away.", "Hi!", "Hey."]},
    {"prompt": "Name a colour.", "completions": ["Blue.", "Seven.", "Red.", ""]},
    {"prompt": [{"role": "user", "content": "Count to three."}], "completions": ["1 2 3", "3 2 1", "one", "1 2 3"]},
    {"prompt": "Describe the sea.", "completions": ["Vast and blue.", "A table.", "Deep.", "Wet."]},
]


def _pg_connect(host: str, port: int, user: str, dbname: str):
    import psycopg

    return psycopg.connect(host=host, port=port, user=user, dbname=dbname, autocommit=True, connect_timeout=3)


def _find_server(host: str, port: int) -> tuple[str, str] | str:
    """(user, maintenance database) of a server that lets us in, or why none does."""
    import psycopg

    reasons = []
    for user in PG_USERS:
        for dbname in PG_DATABASES:
            try:
                with _pg_connect(host, port, user, dbname) as conn:
                    conn.execute("SELECT 1")
                return user, dbname
            except psycopg.Error as e:
                reasons.append(f"{user}@{host}:{port}/{dbname}: {str(e).strip().splitlines()[0]}")
    return "; ".join(reasons[-2:])


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_binaries() -> tuple[str, str] | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        initdb, pg_ctl = os.path.join(folder, "initdb"), os.path.join(folder, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


def _start_throwaway_server(root: Path, run_as: list[str]) -> tuple[tuple | None, str]:
    """initdb and start a server with its files in ``root``: (server, "") or (None, why not)."""
    binaries = _pg_binaries()
    if binaries is None:
        return None, "no initdb/pg_ctl (Debian package postgresql) to start a throwaway server"
    initdb, pg_ctl = binaries
    data, port = root / "data", _free_port()
    init = subprocess.run(
        [*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"], capture_output=True, text=True
    )
    if init.returncode:
        return None, f"initdb failed: {init.stderr.strip().splitlines()[-1:]}"
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    start = subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        capture_output=True,
        text=True,
    )
    if start.returncode:
        return None, f"pg_ctl start failed: {start.stderr.strip() or (root / 'log').read_text()[-300:]}"
    return ("127.0.0.1", port, "postgres", "postgres"), ""


@contextlib.contextmanager
def _throwaway_server():
    """A PostgreSQL server of our own for the session, from Debian's postgresql package, as
    ``(server, "")``, or ``(None, why not)``. Stopped and deleted afterwards."""
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root; run it as the package's own user
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            yield None, "running as root, and there is no 'postgres' user to run initdb as"
            return
        run_as = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's temporary folder, which the server's user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="rlhflab-postgres-"))
    if run_as:
        shutil.chown(root, "postgres")
    try:
        server, reason = _start_throwaway_server(root, run_as)
        yield server, reason
        if server is not None:
            for drop in _DROPS:
                drop.join()
            pg_ctl = _pg_binaries()[1]
            subprocess.run([*run_as, pg_ctl, "-D", str(root / "data"), "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """(host, port, user, maintenance database) of a PostgreSQL server, or a skip reason (str)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield "psycopg is not installed"
        return
    found = _find_server(PG_HOST, PG_PORT)
    try:
        if not isinstance(found, str):
            yield (PG_HOST, PG_PORT, *found)
            return
        with _throwaway_server() as (server, reason):
            yield f"no PostgreSQL server ({found}); {reason}" if server is None else server
    finally:
        for drop in _DROPS:
            drop.join()


def _drop_database(server, name: str) -> None:
    host, port, user, maintenance = server
    with _pg_connect(host, port, user, maintenance) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Databases being dropped in the background (a drop waits on the disk; the next test need not).
_DROPS: list[threading.Thread] = []


@contextlib.contextmanager
def _fresh_postgres_database(server):
    host, port, user, maintenance = server
    name = f"rlhflab_test_{uuid.uuid4().hex[:12]}"
    with _pg_connect(host, port, user, maintenance) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        drop = threading.Thread(target=_drop_database, args=(server, name))
        drop.start()
        _DROPS.append(drop)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A database URL to an empty database: a SQLite file in tmp_path, or a fresh PostgreSQL database
    (created for the test and dropped after it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    if isinstance(server, str):
        pytest.skip(server)
    with _fresh_postgres_database(server) as url:
        yield url


@pytest.fixture
def store(db_url):
    """A migrated Store on ``db_url`` (closed after the test, so its database can be dropped)."""
    from rlhflab.app.store import Store

    with Store(db_url, password_hasher=FAST_HASHER) as opened:
        yield opened


@pytest.fixture
def samples_file(tmp_path):
    """A small ``rlhflab sample``-style JSONL: 4 prompts (one a chat) with 4 completions each, one
    empty and one repeated (which items skip)."""
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SAMPLES))
    return path
