"""The root command group and what every command shares."""

from __future__ import annotations

import click
import sqlalchemy as sa

from prediction_pipeline.store.db import default_database_url, make_engine


class Context:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        return self._engine


@click.group()
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
    ctx.obj = Context(database_url or default_database_url())


def fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None
