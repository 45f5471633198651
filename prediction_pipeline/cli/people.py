"""Users and their watchlists (CSV imports included)."""

from __future__ import annotations

import click
import sqlalchemy as sa

from prediction_pipeline.cli.base import Context, main
from prediction_pipeline.cli.csv_input import read_rows
from prediction_pipeline.core.batching import batched
from prediction_pipeline.core.email_addresses import normalize_email
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import users as user_store


@main.group()
def users() -> None:
    """Digest recipients (emails are stored stripped and lower-cased)."""


# Rows per statement while importing: memory stays flat however long the file is.
_IMPORT_BATCH = 500
_SHOWN_ERRORS = 50


def _bool(value: str, default: bool) -> bool:
    if value == "":
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use true/false)")


class _InvalidRows:
    """The invalid rows of an import: how many, and the first messages to show."""

    def __init__(self) -> None:
        self.count = 0
        self.shown: list[str] = []

    def add(self, line: int, error: Exception) -> None:
        self.count += 1
        if len(self.shown) < _SHOWN_ERRORS:
            self.shown.append(f"line {line}: {str(error)[:200]}")

    def report(self, skip_invalid: bool, what: str) -> None:
        """Print them; unless `skip_invalid`, fail (the caller's transaction rolls back)."""
        for message in self.shown:
            click.echo(f"  {message}", err=True)
        if self.count > len(self.shown):
            click.echo(f"  ... and {self.count - len(self.shown)} more", err=True)
        if self.count and not skip_invalid:
            raise click.ClickException(
                f"{self.count} invalid row(s): nothing imported (fix them, or pass "
                f"--skip-invalid to import the valid {what})"
            )

    def suffix(self) -> str:
        return f", {self.count} invalid rows skipped" if self.count else ""


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
    invalid = _InvalidRows()
    created = updated = unchanged = 0
    # One transaction, written a batch at a time as the file is read: an invalid row found
    # late still means nothing imported (the rollback), and memory does not grow with the file.
    with obj.engine.begin() as conn:
        for batch in batched(read_rows(file, {"email"}), _IMPORT_BATCH):
            new_users = []
            for line, row in batch:
                try:
                    new_users.append(
                        user_store.NewUser(
                            email=normalize_email(row.get("email", "")),
                            name=row.get("name") or None,
                            digest_opt_in=_bool(row.get("digest_opt_in", ""), True),
                        )
                    )
                except ValueError as exc:
                    invalid.add(line, exc)
            counts = user_store.upsert_users(conn, new_users)
            created, updated = created + counts.created, updated + counts.updated
            unchanged += counts.unchanged
        invalid.report(skip_invalid, "users")
    click.echo(
        f"users: {created} added, {updated} updated, {unchanged} unchanged" + invalid.suffix()
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
    invalid = _InvalidRows()
    added = already = 0
    rows = read_rows(file, {"email"}, one_of={"market_id", "market"})
    with obj.engine.begin() as conn:  # one transaction, batch by batch (see users import)
        for batch in batched(rows, _IMPORT_BATCH):
            pairs = _watch_pairs(conn, batch, invalid)
            new = user_store.add_watch_items(conn, pairs)
            added, already = added + new, already + len(set(pairs)) - new
        invalid.report(skip_invalid, "rows")
    click.echo(f"watchlist: {added} added, {already} already watched" + invalid.suffix())


def _watch_pairs(
    conn: sa.Connection, batch: list[tuple[int, dict[str, str]]], invalid: _InvalidRows
) -> list[tuple[int, int]]:
    """(user id, market id) of each valid row of `batch` (two look-up queries a batch)."""
    parsed = []
    for line, row in batch:
        try:
            parsed.append((line, normalize_email(row.get("email", "")), _market_ref(row)))
        except ValueError as exc:
            invalid.add(line, exc)
    user_ids = user_store.user_ids(conn, {email for _, email, _ in parsed})
    market_ids = market_store.market_ids(conn, {ref for _, _, ref in parsed})
    pairs = []
    for line, email, ref in parsed:
        if email not in user_ids:
            invalid.add(line, ValueError(f"no user {email!r} (import users first)"))
        elif ref not in market_ids:
            invalid.add(line, ValueError(f"no market {ref!r} (by internal id or source id)"))
        else:
            pairs.append((user_ids[email], market_ids[ref]))
    return pairs


def _market_ref(row: dict[str, str]) -> str:
    ref = row.get("market_id") or row.get("market") or ""
    if not ref:
        raise ValueError("empty market_id")
    return ref
