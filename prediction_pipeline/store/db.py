"""Engines for the app database: one URL, SQLite by default, PostgreSQL in production."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

DATABASE_URL_ENV = "PREDICTION_PIPELINE_DATABASE_URL"
DATA_DIR_ENV = "PREDICTION_PIPELINE_DATA_DIR"


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

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # WAL lets readers (the UI's asset checks, the CLI) run beside a writing run.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


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
