"""The feedback app's database connection: SQLite (a file, the default) or PostgreSQL, and its migrations.

Correctness under concurrency is left to the database. On SQLite that means WAL mode (readers never
block the writer), a busy timeout (a writer waits its turn instead of failing), foreign keys on, and
``BEGIN IMMEDIATE`` for every write transaction, so two writers never both read the state they are
about to change: the second waits at BEGIN until the first commits. Read transactions begin
deferred and see one snapshot. On PostgreSQL the store locks rows itself (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import os
import select
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import StaticPool

from rlhflab.errors import ConfigError

DEFAULT_DB_URL = "sqlite:///rlhflab-feedback.db"
# How long a SQLite writer waits for the one before it, in milliseconds. Writes are short (one
# assignment or one label), so a wait this long means something is stuck rather than busy.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option naming how a transaction begins on SQLite: "IMMEDIATE" (the default: a write
# transaction takes the write lock at BEGIN) or "DEFERRED" (a read transaction).
SQLITE_BEGIN = "rlhflab_sqlite_begin"
APP_DIR = Path(__file__).resolve().parent
# Connections one process keeps (POOL_SIZE) and may open at most (POOL_SIZE + POOL_OVERFLOW): as many
# as the threads that may run a Store call at once (anyio's default thread limiter, 40, runs
# FastAPI's sync routes and ``run_in_threadpool``), so a saturated server never has a request wait
# out the pool's timeout for a connection (a 500). On PostgreSQL, ``--workers N`` needs
# N x 40 connections within the server's max_connections (100 by default).
POOL_SIZE, POOL_OVERFLOW = 10, 30
# Seconds after which a pooled PostgreSQL connection is replaced at its next checkout.
POOL_RECYCLE_S = 1800


def default_db_url() -> str:
    """The database the app and ``rlhflab feedback`` use unless told otherwise: ``$RLHFLAB_DB``, else a
    SQLite file ``rlhflab-feedback.db`` in the working directory."""
    return os.environ.get("RLHFLAB_DB") or DEFAULT_DB_URL


def _normalise_url(url: str):
    """``postgresql://`` and ``postgres://`` mean the psycopg 3 driver, the one installed."""
    try:
        parsed = make_url(url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and ValueError for a bad URL
        raise ConfigError(f"invalid database URL '{url}' ({e})") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"database URL '{url}': use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    return parsed


def _configure_sqlite(engine: Engine) -> None:
    """Take transaction control from the sqlite3 driver (SQLAlchemy's documented recipe for pysqlite):
    the driver is told never to emit BEGIN itself, and the engine emits ``BEGIN IMMEDIATE`` (or a
    plain deferred ``BEGIN`` for reads) when a transaction starts."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
        # synchronous stays FULL (the default): a label is acknowledged only once it is on disk.
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default: :func:`default_db_url`), configured for safe concurrent use."""
    parsed = _normalise_url(url or default_db_url())
    if parsed.get_backend_name() == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        if not memory:
            Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            # An in-memory database exists only inside its one connection.
            **({"poolclass": StaticPool} if memory else {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}),
        )
        _configure_sqlite(engine)
        return engine
    # No pool_pre_ping: it costs a round trip on every checkout, several per request. A connection the
    # server has closed (a restart, an idle timeout, pg_terminate_backend) is found without one, by
    # polling its socket at checkout; pool_recycle replaces connections before a silent middlebox
    # timeout can drop them.
    engine = create_engine(
        parsed, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_recycle=POOL_RECYCLE_S, pool_pre_ping=False
    )
    event.listen(engine, "checkout", _refuse_closed_connection)
    return engine


def closed_by_server(dbapi_connection) -> bool:
    """Whether an idle psycopg connection is unusable, found without a round trip: psycopg knows it is
    closed or broken, or its socket is readable, which on an idle connection (the app LISTENs to
    nothing) means the server has sent its goodbye (FATAL 57P01 on shutdown) or closed it."""
    import psycopg  # the PostgreSQL driver: imported only where it is used

    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    try:
        fd = dbapi_connection.pgconn.socket
    except psycopg.OperationalError:  # the connection has no socket any more
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _refuse_closed_connection(dbapi_connection, _record, _proxy) -> None:
    """Pool checkout: a connection the server closed is replaced by a new one (SQLAlchemy's pool does
    that on DisconnectionError), so the first request after a database restart succeeds."""
    if closed_by_server(dbapi_connection):
        raise DisconnectionError("the database server closed this pooled connection")


def single_statement(engine: Engine) -> Engine:
    """The same engine for a read that is one statement (a statement sees one snapshot by itself):
    autocommit on PostgreSQL, so no BEGIN and COMMIT round trips; a deferred BEGIN on SQLite."""
    if engine.dialect.name == "sqlite":
        return read_only(engine)
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def read_only(engine: Engine) -> Engine:
    """The same engine for read transactions that see one consistent snapshot: a deferred BEGIN on
    SQLite (in WAL mode it reads without blocking or being blocked by the writer), REPEATABLE READ
    on PostgreSQL (every statement of the transaction sees the database as of its first one)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"})
    return engine.execution_options(isolation_level="REPEATABLE READ")


def alembic_config() -> Config:
    """The packaged Alembic configuration, with its script location made absolute, so migrations run
    from any working directory (and from an installed wheel)."""
    config = Config(str(APP_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(APP_DIR / "migrations"))
    return config


def migrate(engine: Engine) -> None:
    """Bring the database's schema to the newest revision (``alembic upgrade head``) in one transaction.

    Safe to call on every start: at head it does nothing. Two processes starting at once on a fresh
    database are serialised (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock in ``env.py``).
    """
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
