"""`make demo`."""

from __future__ import annotations

import click

from prediction_pipeline.cli.base import Context, main
from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import safe_url


@main.command()
@click.option("--day", default=None, help="Partition day (default: today, UTC).")
@click.option("--history-days", default=14, show_default=True, help="Days of markets before it.")
@click.pass_obj
def demo(obj: Context, day: str | None, history_days: int) -> None:
    """Run today's pipeline on the offline defaults into $DAGSTER_HOME and summarise it."""
    import datetime as dt

    import dagster as dg

    from prediction_pipeline.demo import run_demo

    today = dt.date.fromisoformat(day) if day else dt.datetime.now(dt.UTC).date()
    migrate.upgrade(obj.engine)
    ok = run_demo(obj.engine, today, history_days, click.echo)
    click.echo(f"\napp database: {safe_url(obj.database_url)}")
    click.echo(f"dagster home: {dg.DagsterInstance.get().root_directory}")
    click.echo("look at it:   make ui   (http://127.0.0.1:3000 -> Assets, Runs, Automation)")
    click.echo("              .venv/bin/prediction-pipeline markets show --limit 10")
    click.echo("              .venv/bin/prediction-pipeline predictions show --limit 10")
    if not ok:
        raise SystemExit(1)
