"""Engines for the app database: one URL, SQLite by default, PostgreSQL in production."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

DATABASE_URL_ENV = "PREDICTION_PIPELINE_DATABASE_URL"
DATA_DIR_ENV = "PREDICTION_PIPELINE_DATA_DIR"

# conn.info key: the transaction about to begin is an autobegin (a read through connect()).
_AUTOBEGIN = "prediction_pipeline.autobegin"


def data_dir() -> Path:
    """The local folder for offline state (app database, outbox, charts)."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.cwd() / ".local").resolve()


def default_database_url() -> str:
    return os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{data_dir() / 'app.db'}"


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        _sqlite_transactions(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _sqlite_transactions(engine: sa.Engine) -> None:
    """Make SQLite transactions real and write transactions serial.

    pysqlite starts no transaction before a SELECT, so a read-check-write (a credit check,
    a progress update) could interleave with another process, and SQLite ignores
    `FOR UPDATE`. Here the driver's own BEGIN handling is off and SQLAlchemy's events emit
    the BEGIN: `BEGIN IMMEDIATE` (takes the write lock at once, waiting up to busy_timeout)
    for every explicit transaction (`engine.begin()`, `conn.begin()`), a plain deferred
    `BEGIN` for the autobegin of a `connect()` used for reads, so WAL readers neither block
    writers nor wait for them, and each read block sees one consistent snapshot."""

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the BEGIN below is the only one
        cursor = dbapi_connection.cursor()
        # WAL lets readers (the UI's asset checks, the CLI) run beside a writing run.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "before_execute")
    def _note_autobegin(conn, *_args) -> None:
        # Fires before SQLAlchemy autobegins a transaction for this statement (not for
        # exec_driver_sql, whose autobegin is then IMMEDIATE: the safe side).
        if not conn.in_transaction():
            conn.info[_AUTOBEGIN] = True

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        autobegin = conn.info.pop(_AUTOBEGIN, False)
        conn.exec_driver_sql("BEGIN" if autobegin else "BEGIN IMMEDIATE")

    # The note lives on the pooled DBAPI connection: never let it outlive its statement.
    @sa.event.listens_for(engine, "after_execute")
    def _forget_after(conn, *_args) -> None:
        conn.info.pop(_AUTOBEGIN, None)

    @sa.event.listens_for(engine, "handle_error")
    def _forget_on_error(context) -> None:
        if context.connection is not None:
            context.connection.info.pop(_AUTOBEGIN, None)

    @sa.event.listens_for(engine, "checkin")
    def _forget_on_checkin(_dbapi_connection, record) -> None:
        record.info.pop(_AUTOBEGIN, None)


def dialect_insert(conn: sa.Connection, table: sa.Table):
    """INSERT with ON CONFLICT support for the connection's dialect (SQLite or PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect: {conn.dialect.name}")


def safe_url(url: str) -> str:
    """The URL with its password masked, for logs and metadata."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)
