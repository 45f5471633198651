"""Operator CLI: `prediction-pipeline --help`."""

from __future__ import annotations

import json

import click
import sqlalchemy as sa

from prediction_pipeline.core.digests import normalize_email
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import users as user_store
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


@main.group()
def models() -> None:
    """The model registry (the `model` partitions follow it)."""


def _sync_partition(slug: str) -> None:
    """Add the model's dynamic partition now when a Dagster instance is configured; the
    model_registry_sensor repairs any drift otherwise."""
    import os

    if not os.environ.get("DAGSTER_HOME"):
        click.echo("DAGSTER_HOME is unset: model_registry_sensor will add the partition")
        return
    import dagster as dg

    from prediction_pipeline.partitions import model_partitions

    with dg.DagsterInstance.get() as instance:
        if not instance.has_dynamic_partition(model_partitions.name, slug):
            instance.add_dynamic_partitions(model_partitions.name, [slug])
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
@click.option("--disabled", is_flag=True, help="Register without enabling.")
@click.pass_obj
def models_add(
    obj: Context,
    slug: str,
    web_search: bool,
    max_in_flight: int,
    requests_per_second: float,
    max_cost_usd: float | None,
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
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SLUG") from None
    with obj.engine.begin() as conn:
        model_store.upsert_model(conn, spec)
    click.echo(f"{spec.slug}: {'enabled' if spec.enabled else 'disabled'} ({spec.provider})")
    _sync_partition(spec.slug)


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
        _sync_partition(slug)


@models.command("enable")
@click.argument("slug")
@click.pass_obj
def models_enable(obj: Context, slug: str) -> None:
    """Enable a model: the daily schedule forecasts with it."""
    _set_enabled(obj, slug, True)


@models.command("disable")
@click.argument("slug")
@click.pass_obj
def models_disable(obj: Context, slug: str) -> None:
    """Disable a model: the daily schedule leaves it out."""
    _set_enabled(obj, slug, False)


@main.group()
def predictions() -> None:
    """Stored predictions and their dead letters."""


@predictions.command("show")
@click.option("--model")
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]))
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def predictions_show(obj: Context, model: str | None, day, limit: int) -> None:
    """The latest predictions."""
    with obj.engine.connect() as conn:
        rows = prediction_store.recent_predictions(conn, model, day.date() if day else None, limit)
    for r in rows:
        price = "-" if r.market_price is None else f"{r.market_price:.3f}"
        click.echo(
            f"{r.day} {r.model_slug:<28} {r.source_id[:14]:<14} p={r.probability:.3f} "
            f"market={price} {r.question[:60]}"
        )


@predictions.command("failures")
@click.option("--model")
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]))
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def predictions_failures(obj: Context, model: str | None, day, limit: int) -> None:
    """Open dead letters; re-materialize the partition to re-drive them."""
    with obj.engine.connect() as conn:
        rows = prediction_store.open_failures(conn, model, day.date() if day else None, limit)
    if not rows:
        click.echo("no open failures")
    for r in rows:
        click.echo(
            f"{r.day} {r.model_slug:<28} {r.source_id[:14]:<14} {r.kind:<6} "
            f"attempts={r.attempts} {r.error_type}: {r.last_error[:100]}"
        )


@main.group()
def users() -> None:
    """Digest recipients (emails are stored stripped and lower-cased)."""


def _read_csv(path: str, required: set[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV file with a header line; column names are
    case-insensitive, blank lines are skipped. Raises a ClickException naming missing columns."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {(c or "").strip().lower() for c in reader.fieldnames or []}
        missing = required - columns
        if missing:
            raise click.ClickException(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                f"found {', '.join(sorted(columns)) or 'none'}"
            )
        rows = []
        for row in reader:
            # Extra cells beyond the header land under the key None: ignore them.
            cells = {
                k.strip().lower(): (v or "").strip()
                for k, v in row.items()
                if isinstance(k, str) and not isinstance(v, list)
            }
            if any(cells.values()):
                rows.append((reader.line_num, cells))
        return rows


def _bool(value: str, default: bool) -> bool:
    if value == "":
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use true/false)")


def _report_invalid(errors: list[str], skip_invalid: bool, what: str) -> None:
    for error in errors[:50]:
        click.echo(f"  {error}", err=True)
    if len(errors) > 50:
        click.echo(f"  ... and {len(errors) - 50} more", err=True)
    if errors and not skip_invalid:
        raise click.ClickException(
            f"{len(errors)} invalid row(s): nothing imported (fix them, or pass --skip-invalid "
            f"to import the valid {what})"
        )


@users.command("add")
@click.argument("email")
@click.option("--name", help="Display name used in the greeting and the To header.")
@click.option("--no-digest", is_flag=True, help="Create without the daily digest.")
@click.pass_obj
def users_add(obj: Context, email: str, name: str | None, no_digest: bool) -> None:
    """Add a user (or update the name of an existing one)."""
    try:
        with obj.engine.begin() as conn:
            user, created = user_store.add_user(conn, email, name, digest_opt_in=not no_digest)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="EMAIL") from None
    state = "subscribed" if user.subscribed else "not subscribed to the digest"
    click.echo(f"{user.email}: {'added' if created else 'exists'} (id {user.id}, {state})")


@users.command("list")
@click.option("--limit", type=int, default=None, help="At most this many users.")
@click.pass_obj
def users_list(obj: Context, limit: int | None) -> None:
    """Users with their digest state, watched markets and last digest sent."""
    with obj.engine.connect() as conn:
        rows = user_store.list_users(conn, limit)
    if not rows:
        click.echo("no users: `prediction-pipeline users add EMAIL` or `users import FILE.csv`")
        return
    click.echo(f"{'id':>6}  {'email':<36} {'digest':<12} {'watched':>7}  {'last digest':<11}  name")
    for r in rows:
        state = "unsubscribed" if r.unsubscribed_at else ("on" if r.digest_opt_in else "off")
        click.echo(
            f"{r.id:>6}  {r.email[:36]:<36} {state:<12} {r.watched:>7}  "
            f"{str(r.last_digest or '-'):<11}  {r.name or ''}"
        )


@users.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows, report the rest.")
@click.pass_obj
def users_import(obj: Context, file: str, skip_invalid: bool) -> None:
    """Import users from a CSV with columns email[,name][,digest_opt_in].

    Existing users keep their subscription state (an import never re-subscribes anyone who
    unsubscribed); a non-empty name updates theirs. digest_opt_in (true/false, default true)
    applies to new users.
    """
    new_users, errors = [], []
    for line, row in _read_csv(file, {"email"}):
        try:
            new_users.append(
                user_store.NewUser(
                    email=normalize_email(row.get("email", "")),
                    name=row.get("name") or None,
                    digest_opt_in=_bool(row.get("digest_opt_in", ""), True),
                )
            )
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
    _report_invalid(errors, skip_invalid, "users")
    with obj.engine.begin() as conn:
        counts = user_store.upsert_users(conn, new_users)
    click.echo(
        f"users: {counts.created} added, {counts.updated} updated, {counts.unchanged} unchanged"
        + (f", {len(errors)} invalid rows skipped" if errors else "")
    )


def _set_subscription(obj: Context, email: str, subscribed: bool) -> None:
    with obj.engine.begin() as conn:
        user = user_store.get_user(conn, email)
        if user is None:
            raise click.ClickException(f"no user {email!r}")
        user_store.set_subscription(conn, user.id, subscribed)
    click.echo(f"{user.email}: {'subscribed' if subscribed else 'unsubscribed'}")


@users.command("unsubscribe")
@click.argument("email")
@click.pass_obj
def users_unsubscribe(obj: Context, email: str) -> None:
    """Stop a user's daily digest (what the one-click link in every digest does)."""
    _set_subscription(obj, email, False)


@users.command("resubscribe")
@click.argument("email")
@click.pass_obj
def users_resubscribe(obj: Context, email: str) -> None:
    """Turn a user's daily digest back on (only at the user's own request)."""
    _set_subscription(obj, email, True)


@main.group()
def watchlist() -> None:
    """The markets each user watches; MARKET_ID is our internal id or the source id."""


def _watch_change(obj: Context, email: str, market_ref: str, add: bool) -> tuple[int, bool]:
    try:
        with obj.engine.begin() as conn:
            change = user_store.watch if add else user_store.unwatch
            return change(conn, email, market_ref)
    except (user_store.UnknownUserError, user_store.UnknownMarketError) as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="EMAIL") from None


@watchlist.command("add")
@click.argument("email")
@click.argument("market_id")
@click.pass_obj
def watchlist_add(obj: Context, email: str, market_id: str) -> None:
    """Watch a market."""
    internal, added = _watch_change(obj, email, market_id, add=True)
    click.echo(f"{email}: {'now watching' if added else 'already watching'} market {internal}")


@watchlist.command("remove")
@click.argument("email")
@click.argument("market_id")
@click.pass_obj
def watchlist_remove(obj: Context, email: str, market_id: str) -> None:
    """Stop watching a market."""
    internal, removed = _watch_change(obj, email, market_id, add=False)
    click.echo(f"{email}: {'removed' if removed else 'was not watching'} market {internal}")


@watchlist.command("list")
@click.argument("email", required=False)
@click.pass_obj
def watchlist_list(obj: Context, email: str | None) -> None:
    """Watched markets, of one user or of everyone, with their latest price."""
    try:
        with obj.engine.connect() as conn:
            rows = user_store.list_watchlist(conn, email)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="EMAIL") from None
    if not rows:
        click.echo("no watched markets")
        return
    for r in rows:
        price = "-" if r.yes_price is None else f"{r.yes_price:.3f}"
        click.echo(
            f"{r.email[:32]:<32} {r.market_id:>6} {r.source_id[:16]:<16} {r.status:<9} "
            f"{price:>6}  {r.question[:60]}"
        )


@watchlist.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows, report the rest.")
@click.pass_obj
def watchlist_import(obj: Context, file: str, skip_invalid: bool) -> None:
    """Import watched markets from a CSV with columns email,market_id (the users must exist:
    `users import` first; market_id is our internal id or the source id)."""
    rows = _read_csv(file, {"email"})
    if rows and "market_id" not in rows[0][1] and "market" not in rows[0][1]:
        raise click.ClickException(f"{file}: missing column market_id")
    pairs, errors = [], []
    with obj.engine.begin() as conn:
        user_ids: dict[str, int | None] = {}
        market_ids: dict[str, int | None] = {}
        for line, row in rows:
            ref = row.get("market_id") or row.get("market") or ""
            try:
                email = normalize_email(row.get("email", ""))
                if email not in user_ids:
                    user = user_store.get_user(conn, email)
                    user_ids[email] = user.id if user else None
                if user_ids[email] is None:
                    raise ValueError(f"no user {email!r} (import users first)")
                if not ref:
                    raise ValueError("empty market_id")
                if ref not in market_ids:
                    try:
                        market_ids[ref] = user_store.resolve_market(conn, ref)
                    except user_store.UnknownMarketError:
                        market_ids[ref] = None
                if market_ids[ref] is None:
                    raise ValueError(f"no market {ref!r} (by internal id or source id)")
                pairs.append((user_ids[email], market_ids[ref]))
            except ValueError as exc:
                errors.append(f"line {line}: {exc}")
        _report_invalid(errors, skip_invalid, "rows")
        added = user_store.add_watch_items(conn, pairs)
    click.echo(
        f"watchlist: {added} added, {len(set(pairs)) - added} already watched"
        + (f", {len(errors)} invalid rows skipped" if errors else "")
    )


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("market")
@click.argument("model")
@click.option("--web-search", is_flag=True, help="Let the model search the web.")
@click.option("--user", "user_email", help="The requesting user's email.")
@click.pass_obj
def predict(obj: Context, market: str, model: str, web_search: bool, user_email: str | None):
    """Queue one on-demand prediction of MARKET (id or source id) by MODEL; prints its id."""
    from prediction_pipeline.services import on_demand

    try:
        request_id = on_demand.request_prediction(
            obj.engine, market, model, user_email=user_email, web_search=web_search
        )
    except (LookupError, ValueError) as exc:
        _fail(exc)
    click.echo(request_id)


@main.group()
def session() -> None:
    """Multi-model prediction sessions, paid with credits."""


@session.command("create")
@click.option("--market", required=True, help="Market id or source id.")
@click.option("--models", required=True, help="Comma-separated model slugs.")
@click.option("--user", "user_email", required=True, help="The paying user's email.")
@click.option("--web-search", is_flag=True, help="Research the question on the web first.")
@click.pass_obj
def session_create(obj: Context, market: str, models: str, user_email: str, web_search: bool):
    """Debit credits and queue a session; prints its id."""
    from prediction_pipeline.services import on_demand

    try:
        session_id = on_demand.create_session(
            obj.engine, market, models.split(","), user_email, web_search=web_search
        )
    except (LookupError, ValueError) as exc:
        _fail(exc)
    click.echo(session_id)


@main.group()
def credits() -> None:
    """The credit ledger."""


@credits.command("grant")
@click.argument("email")
@click.argument("amount", type=click.IntRange(min=1))
@click.pass_obj
def credits_grant(obj: Context, email: str, amount: int) -> None:
    """Top a user up (created if needed); prints the new balance."""
    from prediction_pipeline.services import on_demand

    try:
        balance = on_demand.grant(obj.engine, email, amount)
    except ValueError as exc:
        _fail(exc)
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
        _fail(exc)
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    click.echo(f"{info['status']} {info['kind']} {info['id']}")
    for key, value in info.items():
        if key not in ("status", "kind", "id") and value not in (None, ""):
            click.echo(f"  {key}: {json.dumps(value, default=str)}")


@main.command()
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def alerts(obj: Context, limit: int) -> None:
    """Recent run-failure alerts."""
    from prediction_pipeline.store import on_demand as queue

    with obj.engine.connect() as conn:
        rows = queue.alerts(conn, limit)
    if not rows:
        click.echo("no alerts")
    for row in rows:
        click.echo(
            f"{row.created_at:%Y-%m-%d %H:%M} {row.job_name} {row.partition_key or ''} "
            f"{row.run_url}\n  {row.error[:200]}"
        )


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


if __name__ == "__main__":
    main()
