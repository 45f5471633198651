"""The root command group and what every command shares.

Usage mistakes (a bad or unreachable database URL, a database that is not upgraded, no
Dagster instance) end in ONE line on stderr naming the fix, exit code 1 (2 for a bad URL).
Tracebacks are left to bugs.
"""

from __future__ import annotations

import os
import re

import click
import sqlalchemy as sa
from click.core import ParameterSource

from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import default_database_url, make_engine, safe_url

URL_FORMAT = "use sqlite:///PATH or postgresql+psycopg2://USER@HOST:PORT/DB"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
UPGRADE_HINT = "run `prediction-pipeline db upgrade`"


class UsageProblem(click.ClickException):
    """A mistake the operator fixes: printed as one line, no traceback."""


class BadDatabaseUrl(UsageProblem):
    exit_code = 2


class BadUsage(UsageProblem):
    exit_code = 2


def _mask(raw: str) -> str:
    """An unparsable URL may still hold a password (`user:secret@host`): mask it."""
    return re.sub(r":[^:@/]*@", ":***@", raw)


class Context:
    def __init__(self, database_url: str, source: str = "--database-url") -> None:
        self.database_url = database_url
        self.source = source  # where the URL came from, for the error message
        self._engine: sa.Engine | None = None
        self._schema_checked = False

    def _check_url(self) -> sa.URL:
        try:
            url = sa.engine.make_url(self.database_url)
        except sa.exc.ArgumentError:
            raise BadDatabaseUrl(
                f"{self.source} {_mask(self.database_url)!r} is not a database URL: {URL_FORMAT}"
            ) from None
        if url.get_backend_name() not in SUPPORTED_BACKENDS:
            raise BadDatabaseUrl(
                f"{self.source}: unsupported database {url.get_backend_name()!r} "
                f"({safe_url(self.database_url)}): {URL_FORMAT}"
            )
        return url

    def _where(self, url: sa.URL) -> str:
        if url.get_backend_name() == "sqlite":
            return url.database or ":memory:"
        return f"{url.host or 'localhost'}:{url.port or 5432}"

    @property
    def unchecked_engine(self) -> sa.Engine:
        """The engine after a first connection, whatever the schema (db commands, demo)."""
        if self._engine is not None:
            return self._engine
        url = self._check_url()
        try:
            engine = make_engine(self.database_url)
        except (sa.exc.NoSuchModuleError, ImportError) as exc:
            raise BadDatabaseUrl(
                f"{self.source}: database driver {url.drivername!r} is not available "
                f"({exc.__class__.__name__}): {URL_FORMAT}"
            ) from None
        except OSError as exc:  # the SQLite file's folder cannot be created
            raise UsageProblem(
                f"cannot create the app database at {self._where(url)}: {exc.strerror} "
                f"(check {self.source})"
            ) from None
        try:
            with engine.connect():
                pass
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if url.password:
                reason = reason.replace(str(url.password), "***")
            raise UsageProblem(
                f"cannot connect to the app database at {self._where(url)} "
                f"({safe_url(self.database_url)}): {reason} (check {self.source})"
            ) from None
        self._engine = engine
        return engine

    @property
    def engine(self) -> sa.Engine:
        """The engine of a database migrated to the code's head revision."""
        engine = self.unchecked_engine
        if not self._schema_checked:
            current, head = migrate.current_revision(engine), migrate.head_revision()
            if current != head:
                raise UsageProblem(
                    f"the app database {safe_url(self.database_url)} is at migration "
                    f"{current or 'none (no schema)'}, the code expects {head}: {UPGRADE_HINT}"
                )
            self._schema_checked = True
        return engine


def _missing_table(exc: sa.exc.DBAPIError) -> bool:
    text = str(exc.orig)
    return "no such table" in text or ("relation" in text and "does not exist" in text)


class RootGroup(click.Group):
    """Turns usage errors and the known database errors of any command into one line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            # Click would print the usage and a hint on lines of their own: keep the hint.
            command = exc.ctx.command_path if exc.ctx else ctx.command_path
            raise BadUsage(f"{exc.format_message()} (see `{command} --help`)") from None
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            # The revision check runs first; this catches a schema damaged by hand.
            if not _missing_table(exc):
                raise
            first = str(exc.orig).strip().splitlines()[0]
            message = f"the app database lacks a table ({first}): {UPGRADE_HINT}"
            raise UsageProblem(message) from None


@click.group(cls=RootGroup)
@click.option(
    "--database-url",
    envvar="PREDICTION_PIPELINE_DATABASE_URL",
    default=None,
    show_envvar=True,
    help="App database URL (default: SQLite under $PREDICTION_PIPELINE_DATA_DIR or ./.local).",
)
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Operate the prediction pipeline's app database."""
    # libpq waits minutes on a host that drops packets; an operator wants an answer now.
    os.environ.setdefault("PGCONNECT_TIMEOUT", "10")
    if database_url:
        from_env = ctx.get_parameter_source("database_url") == ParameterSource.ENVIRONMENT
        source = "PREDICTION_PIPELINE_DATABASE_URL" if from_env else "--database-url"
    else:
        database_url, source = default_database_url(), "the default database URL"
    ctx.obj = Context(database_url, source)


def fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


def dagster_instance_or_none():
    """The Dagster instance of $DAGSTER_HOME, or None when it is unset. A DAGSTER_HOME that is
    not an existing absolute folder is a one-line error (Dagster's own is a traceback)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return None
    if not os.path.isabs(home) or not os.path.isdir(home):
        raise UsageProblem(
            f"DAGSTER_HOME {home!r} is not an existing absolute folder: create it "
            "(`make home` copies dagster.yaml into .local/dagster_home) or unset it"
        )
    import dagster as dg

    return dg.DagsterInstance.get()
