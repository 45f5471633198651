"""`make demo`."""

from __future__ import annotations

import datetime as dt

import click

from prediction_pipeline.cli.base import Context, UsageProblem, dagster_instance_or_none, main
from prediction_pipeline.core.partition_days import PARTITIONS_START
from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import safe_url

NO_DAGSTER_HOME = (
    "DAGSTER_HOME is unset: the demo's runs belong in an instance the UI can open; run "
    "`make demo` (it sets DAGSTER_HOME=.local/dagster_home), or `make home` and "
    "`export DAGSTER_HOME=$PWD/.local/dagster_home`"
)


def _check_days(today: dt.date, history_days: int) -> None:
    """Every day the demo materializes must be a `day` partition (one line if not)."""
    first = today - dt.timedelta(days=history_days)
    start = dt.date.fromisoformat(PARTITIONS_START)
    if first < start:
        raise UsageProblem(
            f"--day {today} with --history-days {history_days} starts at {first}, before the "
            f"first partition day {PARTITIONS_START}: pass a later --day or fewer --history-days"
        )
    last = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    if today > last:
        raise UsageProblem(f"--day {today} is after the last partition day {last}")


@main.command()
@click.option(
    "--day",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Partition day, YYYY-MM-DD (default: today, UTC).",
)
@click.option(
    "--history-days",
    default=14,
    show_default=True,
    type=click.IntRange(min=0),
    help="Days of markets before it.",
)
@click.pass_obj
def demo(obj: Context, day: dt.datetime | None, history_days: int) -> None:
    """Run today's pipeline on the offline defaults into $DAGSTER_HOME and summarise it."""
    from prediction_pipeline.demo import run_demo

    today = day.date() if day else dt.datetime.now(dt.UTC).date()
    _check_days(today, history_days)
    # No temporary instance: the demo's point is the runs you open in the UI afterwards.
    instance = dagster_instance_or_none()
    if instance is None:
        raise UsageProblem(NO_DAGSTER_HOME)
    engine = obj.unchecked_engine
    migrate.upgrade(engine)
    with instance:
        ok = run_demo(engine, today, history_days, click.echo, instance)
        click.echo(f"\napp database: {safe_url(obj.database_url)}")
        click.echo(f"dagster home: {instance.root_directory}")
    click.echo("look at it:   make ui   (http://127.0.0.1:3000 -> Assets, Runs, Automation)")
    click.echo("              .venv/bin/prediction-pipeline markets show --limit 10")
    click.echo("              .venv/bin/prediction-pipeline predictions show --limit 10")
    if not ok:
        raise SystemExit(1)
