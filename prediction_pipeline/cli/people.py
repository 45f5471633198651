"""Users and their watchlists (CSV imports included)."""

from __future__ import annotations

import click

from prediction_pipeline.cli.base import Context, main
from prediction_pipeline.core.digests import normalize_email
from prediction_pipeline.store import users as user_store


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
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many users.")
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
