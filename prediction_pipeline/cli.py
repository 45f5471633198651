"""Operator CLI: `prediction-pipeline --help`."""

from __future__ import annotations

import json

import click
import sqlalchemy as sa

from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import default_database_url, make_engine, safe_url


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


@main.group()
def db() -> None:
    """Schema migrations of the app database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(obj: Context, revision: str) -> None:
    """Create or migrate the app database schema."""
    migrate.upgrade(obj.engine, revision)
    click.echo(
        f"app database {safe_url(obj.database_url)} at {migrate.current_revision(obj.engine)}"
    )


@db.command("current")
@click.pass_obj
def db_current(obj: Context) -> None:
    """Show the schema revision of the app database and the code's head."""
    click.echo(f"current: {migrate.current_revision(obj.engine) or 'none'}")
    click.echo(f"head:    {migrate.head_revision()}")


@main.group()
def markets() -> None:
    """Markets held in the app database."""


@markets.command("show")
@click.option("--status", type=click.Choice(["open", "closed", "resolved"]))
@click.option("--search", help="Only questions containing this text.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def markets_show(obj: Context, status: str | None, search: str | None, limit: int, as_json: bool):
    """The markets with the highest volume."""
    with obj.engine.connect() as conn:
        rows = market_store.list_markets(conn, status=status, limit=limit, search=search)
    if as_json:
        for row in rows:
            click.echo(json.dumps(dict(row._mapping), default=str))
        return
    if not rows:
        click.echo("no markets: materialize the `markets` asset first (see README)")
        return
    click.echo(f"{'id':>6}  {'source_id':<16} {'status':<9} {'yes':>6} {'volume':>12}  question")
    for row in rows:
        price = "-" if row.yes_price is None else f"{row.yes_price:.3f}"
        click.echo(
            f"{row.id:>6}  {row.source_id[:16]:<16} {row.status:<9} {price:>6} "
            f"{row.volume:>12,.0f}  {row.question[:70]}"
        )


@main.command()
@click.option("--day", default=None, help="Partition day (default: today, UTC).")
@click.pass_obj
def demo(obj: Context, day: str | None) -> None:
    """Run today's pipeline on the offline defaults into $DAGSTER_HOME and summarise it."""
    import datetime as dt

    import dagster as dg

    from prediction_pipeline.definitions import defs

    day = day or dt.datetime.now(dt.UTC).date().isoformat()
    migrate.upgrade(obj.engine)
    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("markets_job").execute_in_process(
        partition_key=day, instance=instance
    )
    meta = result.asset_materializations_for_node("markets")[0].metadata
    click.echo(
        f"\nmarkets {day}: run {result.run_id} {'succeeded' if result.success else 'FAILED'}"
    )
    click.echo(
        "  "
        + ", ".join(
            f"{k}={meta[k].value}"
            for k in ("source", "markets", "new", "updated", "closed", "resolved", "skipped")
        )
    )
    checks = result.get_asset_check_evaluations()
    click.echo(f"  checks: {sum(c.passed for c in checks)}/{len(checks)} passed")
    click.echo(f"\napp database: {safe_url(obj.database_url)}")
    click.echo(f"dagster home: {instance.root_directory}")
    click.echo("look at it:   make ui   (then http://127.0.0.1:3000 -> Assets, Runs)")
    click.echo("              .venv/bin/prediction-pipeline markets show --limit 10")
    if not result.success:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
