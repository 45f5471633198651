"""Schema, markets, the model registry and predictions."""

from __future__ import annotations

import datetime as dt
import json

import click

from prediction_pipeline.cli.base import Context, UsageProblem, dagster_instance_or_none, main
from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store.db import safe_url


@main.group()
def db() -> None:
    """Schema migrations of the app database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(obj: Context, revision: str) -> None:
    """Create or migrate the app database schema; with DAGSTER_HOME set, also add the
    registry's enabled models to the `models` partitions."""
    engine = obj.unchecked_engine
    instance = _instance_for_partitions()
    migrate.upgrade(engine, revision)
    current = migrate.current_revision(engine)
    click.echo(f"app database {safe_url(obj.database_url)} at {current}")
    if current != migrate.head_revision():
        if instance is not None:
            instance.dispose()
        return  # an older schema may lack the registry's columns
    if instance is None:
        return
    with engine.connect() as conn:
        enabled = [m.slug for m in model_store.list_models(conn, enabled_only=True)]
    _sync_partitions(enabled, instance)


@db.command("current")
@click.pass_obj
def db_current(obj: Context) -> None:
    """Show the schema revision of the app database and the code's head."""
    click.echo(f"current: {migrate.current_revision(obj.unchecked_engine) or 'none'}")
    click.echo(f"head:    {migrate.head_revision()}")


@main.group()
def markets() -> None:
    """Markets held in the app database."""


@markets.command("show")
@click.option("--status", type=click.Choice([s.value for s in MarketStatus]))
@click.option("--search", help="Only questions containing this text.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
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
        click.echo(_no_markets_reason(obj, status, search))
        return
    click.echo(f"{'id':>6}  {'source_id':<16} {'status':<9} {'yes':>6} {'volume':>12}  question")
    for row in rows:
        price = "-" if row.yes_price is None else f"{row.yes_price:.3f}"
        click.echo(
            f"{row.id:>6}  {row.source_id[:16]:<16} {row.status:<9} {price:>6} "
            f"{row.volume:>12,.0f}  {row.question[:70]}"
        )


def _no_markets_reason(obj: Context, status: str | None, search: str | None) -> str:
    with obj.engine.connect() as conn:
        any_market = market_store.list_markets(conn, limit=1)
    if not any_market:
        return "no markets: materialize the `markets` asset first (see README)"
    filters = " and ".join(
        f for f in (status and f"status {status}", search and f"question ~ {search!r}") if f
    )
    return f"no markets with {filters}"


@main.group()
def models() -> None:
    """The model registry (the `model` partitions follow it)."""


def _instance_for_partitions():
    """The Dagster instance that gets the model partitions, or None with a one-line note:
    the registry (the app database) is what matters, and model_registry_sensor adds missing
    partitions once the daemon runs, so a missing DAGSTER_HOME is not an error here."""
    try:
        instance = dagster_instance_or_none()
    except UsageProblem as problem:
        click.echo(f"model partitions not added: {problem}; model_registry_sensor adds them")
        return None
    if instance is None:
        click.echo("DAGSTER_HOME is unset: model_registry_sensor will add the model partitions")
    return instance


def _sync_partitions(slugs: list[str], instance=None) -> None:
    """Add the models' dynamic partitions now when a Dagster instance is configured (so
    `DAY|MODEL` keys work at once); the model_registry_sensor repairs any drift otherwise."""
    from prediction_pipeline.partitions import add_model_partitions, model_partitions

    instance = instance or _instance_for_partitions()
    if instance is None:
        return
    with instance:
        for slug in add_model_partitions(instance, slugs):
            click.echo(f"added partition {slug!r} to {model_partitions.name!r}")


@models.command("add")
@click.argument("slug")
@click.option("--web-search/--no-web-search", default=False, show_default=True)
@click.option("--max-in-flight", default=4, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--rps",
    "requests_per_second",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Requests per second to this model.",
)
@click.option("--max-cost-usd", type=click.FloatRange(min=0), help="Spend cap per day.")
@click.option(
    "--knowledge-cutoff",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="YYYY-MM-DD; questions resolved before it are left out of the model's scores.",
)
@click.option("--disabled", is_flag=True, help="Register without enabling.")
@click.pass_obj
def models_add(
    obj: Context,
    slug: str,
    web_search: bool,
    max_in_flight: int,
    requests_per_second: float,
    max_cost_usd: float | None,
    knowledge_cutoff: dt.datetime | None,
    disabled: bool,
) -> None:
    """Register (or update) a model, e.g. `openai/gpt-4o`."""
    try:
        spec = model_store.ModelSpec(
            slug=model_store.validate_slug(slug),
            provider=model_store.provider_for(slug),
            enabled=not disabled,
            web_search=web_search,
            max_in_flight=max_in_flight,
            requests_per_second=requests_per_second,
            max_cost_usd=max_cost_usd,
            knowledge_cutoff=knowledge_cutoff.date() if knowledge_cutoff else None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SLUG") from None
    with obj.engine.begin() as conn:
        model_store.upsert_model(conn, spec)
    click.echo(f"{spec.slug}: {'enabled' if spec.enabled else 'disabled'} ({spec.provider})")
    _sync_partitions([spec.slug])


@models.command("list")
@click.pass_obj
def models_list(obj: Context) -> None:
    """Registered models with their limits."""
    with obj.engine.connect() as conn:
        specs = model_store.list_models(conn)
    click.echo(
        f"{'slug':<36} {'provider':<10} {'enabled':<8} {'web':<5} {'inflight':>8} "
        f"{'rps':>7} {'cap_usd':>8}"
    )
    for m in specs:
        cap = "-" if m.max_cost_usd is None else f"{m.max_cost_usd:g}"
        click.echo(
            f"{m.slug:<36} {m.provider:<10} {str(m.enabled).lower():<8} "
            f"{str(m.web_search).lower():<5} {m.max_in_flight:>8} "
            f"{m.requests_per_second:>7g} {cap:>8}"
        )


def _set_enabled(obj: Context, slug: str, enabled: bool) -> None:
    with obj.engine.begin() as conn:
        if not model_store.update_model(conn, slug, enabled=enabled):
            raise click.ClickException(f"no model {slug!r}: `prediction-pipeline models add`")
    click.echo(f"{slug}: {'enabled' if enabled else 'disabled'}")
    if enabled:
        _sync_partitions([slug])


@models.command("enable")
@click.argument("slug")
@click.pass_obj
def models_enable(obj: Context, slug: str) -> None:
    """Enable a model: its predictions are requested each day once that day's markets are in.

    The `pipeline_automation` sensor asks for today's partition on its next tick when today's
    markets are already in."""
    _set_enabled(obj, slug, True)


@models.command("disable")
@click.argument("slug")
@click.pass_obj
def models_disable(obj: Context, slug: str) -> None:
    """Disable a model: its predictions are no longer requested (its history stays)."""
    _set_enabled(obj, slug, False)


@main.group()
def predictions() -> None:
    """Stored predictions and their dead letters."""


@predictions.command("show")
@click.option("--model")
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.pass_obj
def predictions_show(obj: Context, model: str | None, day, limit: int) -> None:
    """The latest predictions."""
    with obj.engine.connect() as conn:
        if model and model_store.get_model(conn, model) is None:
            raise click.ClickException(
                f"no model {model!r} in the registry: see `prediction-pipeline models list`"
            )
        rows = prediction_store.recent_predictions(conn, model, day.date() if day else None, limit)
    if not rows:
        filters = " and ".join(
            f for f in (model and f"model {model}", day and f"day {day.date()}") if f
        )
        click.echo(
            f"no predictions with {filters}"
            if filters
            else "no predictions: materialize `predictions` (see README)"
        )
    for r in rows:
        price = "-" if r.market_price is None else f"{r.market_price:.3f}"
        click.echo(
            f"{r.day} {r.model_slug:<28} {r.source_id[:14]:<14} p={r.probability:.3f} "
            f"market={price} {r.question[:60]}"
        )


@predictions.command("failures")
@click.option("--model")
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.pass_obj
def predictions_failures(obj: Context, model: str | None, day, limit: int) -> None:
    """Open dead letters; re-materialize the partition to re-drive them."""
    with obj.engine.connect() as conn:
        rows = prediction_store.open_failures(conn, model, day.date() if day else None, limit)
    if not rows:
        click.echo("no open failures")
        return
    for r in rows:
        click.echo(
            f"{r.day} {r.model_slug:<28} {r.source_id[:14]:<14} {r.kind:<6} "
            f"attempts={r.attempts} {r.error_type}: {r.last_error[:100]}"
        )
    click.echo(
        "re-drive a partition (key DAY|MODEL): dagster asset materialize -m "
        f"prediction_pipeline.definitions --select predictions --partition "
        f"'{rows[0].day}|{rows[0].model_slug}'"
    )
