"""On-demand requests, sessions, credits, status and alerts."""

from __future__ import annotations

import json

import click

from prediction_pipeline.cli.base import Context, fail, main

IDEMPOTENCY_HELP = "A retry key: the same key again returns the first id and charges nothing."


@main.command()
@click.argument("market")
@click.argument("model")
@click.option("--user", "user_email", required=True, help="The paying user's email.")
@click.option("--web-search", is_flag=True, help="Let the model search the web.")
@click.option("--idempotency-key", "key", help=IDEMPOTENCY_HELP)
@click.pass_obj
def predict(
    obj: Context, market: str, model: str, user_email: str, web_search: bool, key: str | None
):
    """Debit the user and queue one on-demand prediction of MARKET (id or source id) by
    MODEL; prints its id. A request that fails is refunded."""
    from prediction_pipeline.services import on_demand

    try:
        request_id = on_demand.request_prediction(
            obj.engine,
            market,
            model,
            user_email=user_email,
            web_search=web_search,
            idempotency_key=key,
        )
    except (LookupError, ValueError) as exc:
        fail(exc)
    click.echo(request_id)


@main.group()
def session() -> None:
    """Multi-model prediction sessions, paid with credits."""


@session.command("create")
@click.option("--market", required=True, help="Market id or source id.")
@click.option("--models", required=True, help="Comma-separated model slugs.")
@click.option("--user", "user_email", required=True, help="The paying user's email.")
@click.option("--web-search", is_flag=True, help="Research the question on the web first.")
@click.option("--idempotency-key", "key", help=IDEMPOTENCY_HELP)
@click.pass_obj
def session_create(
    obj: Context, market: str, models: str, user_email: str, web_search: bool, key: str | None
):
    """Debit credits and queue a session; prints its id."""
    from prediction_pipeline.services import on_demand

    try:
        session_id = on_demand.create_session(
            obj.engine,
            market,
            models.split(","),
            user_email,
            web_search=web_search,
            idempotency_key=key,
        )
    except (LookupError, ValueError) as exc:
        fail(exc)
    click.echo(session_id)


@main.group()
def credits() -> None:
    """The credit ledger."""


# AMOUNT is parsed here, not by click: "-5" would otherwise read as an unknown option and
# "1.5" as a usage screen; the service's own check gives the one-line reason.
@credits.command("grant", context_settings={"ignore_unknown_options": True})
@click.argument("email")
@click.argument("amount")
@click.pass_obj
def credits_grant(obj: Context, email: str, amount: str) -> None:
    """Top a user up with AMOUNT credits, a whole number from 1 up (the user is created if
    needed); prints the new balance."""
    from prediction_pipeline.services import on_demand

    try:
        credits = int(amount)
    except ValueError:
        fail(ValueError(f"credits must be a whole number, got {amount!r}"))
    try:
        balance = on_demand.grant(obj.engine, email, credits)
    except ValueError as exc:
        fail(exc)
    click.echo(f"{email}: balance {balance}")


@main.command()
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: Context, item_id: str, as_json: bool) -> None:
    """Where a request or session stands: its status word first."""
    from prediction_pipeline.services import on_demand

    try:
        info = on_demand.status(obj.engine, item_id)
    except LookupError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    click.echo(f"{info['status']} {info['kind']} {info['id']}")
    for key, value in info.items():
        if key not in ("status", "kind", "id") and value not in (None, ""):
            click.echo(f"  {key}: {json.dumps(value, default=str)}")


@main.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.pass_obj
def alerts(obj: Context, limit: int) -> None:
    """Recent run-failure alerts."""
    from prediction_pipeline.store import alerts as alert_store

    with obj.engine.connect() as conn:
        rows = alert_store.alerts(conn, limit)
    if not rows:
        click.echo("no alerts")
    for row in rows:
        click.echo(
            f"{row.created_at:%Y-%m-%d %H:%M} {row.job_name} {row.partition_key or ''} "
            f"{row.run_url}\n  {row.error[:200]}"
        )
