"""Users and their watchlists (idempotent writes for the CLI, CSV imports and the demo).

Subscription state is sticky: adding or importing a user never re-subscribes someone who
unsubscribed; only `set_subscription(..., subscribed=True)` (an explicit operator action)
does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.core.batching import SQL_BATCH, batched
from prediction_pipeline.core.email_addresses import clean_name, normalize_email
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.markets import get_market
from prediction_pipeline.store.tables import (
    digest_deliveries,
    market_snapshots,
    markets,
    users,
    watchlist_items,
)


@dataclass(frozen=True)
class NewUser:
    email: str
    name: str | None = None
    digest_opt_in: bool = True


@dataclass(frozen=True)
class UserCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class User:
    id: int
    email: str
    name: str | None
    digest_opt_in: bool
    unsubscribed_at: dt.datetime | None

    @property
    def subscribed(self) -> bool:
        return self.digest_opt_in and self.unsubscribed_at is None


def _user(row: sa.Row) -> User:
    return User(row.id, row.email, row.name, row.digest_opt_in, row.unsubscribed_at)


def get_user(conn: sa.Connection, email: str) -> User | None:
    row = conn.execute(sa.select(users).where(users.c.email == normalize_email(email))).first()
    return _user(row) if row else None


def user_ids(conn: sa.Connection, emails: Iterable[str]) -> dict[str, int]:
    """Ids of the users with these (normalised) emails, in one query; unknown ones absent."""
    wanted = list(set(emails))
    if not wanted:
        return {}
    query = sa.select(users.c.email, users.c.id).where(users.c.email.in_(wanted))
    return {row.email: row.id for row in conn.execute(query)}


def get_user_by_id(conn: sa.Connection, user_id: int) -> User | None:
    row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
    return _user(row) if row else None


def upsert_users(conn: sa.Connection, new_users: Iterable[NewUser]) -> UserCounts:
    """Create users that do not exist; update the name of those that do when one is given.

    `digest_opt_in` applies to new users only: an import never re-subscribes anyone.
    Emails are normalised (stripped, lower case); the last row wins on duplicates.
    """
    now = dt.datetime.now(dt.UTC)
    by_email: dict[str, NewUser] = {}
    for u in new_users:
        email = normalize_email(u.email)
        by_email[email] = NewUser(email, clean_name(u.name), u.digest_opt_in)
    created = updated = unchanged = 0
    emails = list(by_email)
    for chunk in batched(emails, SQL_BATCH):
        existing = {
            row.email: row
            for row in conn.execute(
                sa.select(users.c.id, users.c.email, users.c.name).where(users.c.email.in_(chunk))
            )
        }
        fresh = [by_email[e] for e in chunk if e not in existing]
        if fresh:
            insert = dialect_insert(conn, users).on_conflict_do_nothing(index_elements=["email"])
            result = conn.execute(
                insert.returning(users.c.id),
                [
                    {
                        "email": u.email,
                        "name": u.name,
                        "digest_opt_in": u.digest_opt_in,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for u in fresh
                ],
            )
            created += len(result.all())
        for email, row in existing.items():
            name = by_email[email].name
            if name is not None and name != row.name:
                conn.execute(
                    sa.update(users).where(users.c.id == row.id).values(name=name, updated_at=now)
                )
                updated += 1
            else:
                unchanged += 1
    return UserCounts(created, updated, unchanged)


def add_user(
    conn: sa.Connection, email: str, name: str | None = None, digest_opt_in: bool = True
) -> tuple[User, bool]:
    """(the user, whether it was created)."""
    counts = upsert_users(conn, [NewUser(email, name, digest_opt_in)])
    user = get_user(conn, email)
    assert user is not None
    return user, counts.created == 1


def set_subscription(conn: sa.Connection, user_id: int, subscribed: bool) -> bool:
    """Unsubscribe (what the one-click link does, after verifying its token) or re-subscribe
    a user explicitly. False when there is no such user."""
    now = dt.datetime.now(dt.UTC)
    values = (
        {"digest_opt_in": True, "unsubscribed_at": None}
        if subscribed
        else {"digest_opt_in": False, "unsubscribed_at": now}
    )
    result = conn.execute(
        sa.update(users).where(users.c.id == user_id).values(**values, updated_at=now)
    )
    return result.rowcount == 1


def list_users(conn: sa.Connection, limit: int | None = None) -> list[sa.Row]:
    """Users with the number of watched markets and the day of their last sent digest."""
    watched = (
        sa.select(sa.func.count())
        .where(watchlist_items.c.user_id == users.c.id)
        .scalar_subquery()
        .label("watched")
    )
    last_digest = (
        sa.select(sa.func.max(digest_deliveries.c.day))
        .where(digest_deliveries.c.user_id == users.c.id, digest_deliveries.c.status == "sent")
        .scalar_subquery()
        .label("last_digest")
    )
    query = sa.select(users, watched, last_digest).order_by(users.c.id)
    if limit:
        query = query.limit(limit)
    return list(conn.execute(query))


# -- watchlists ---------------------------------------------------------------------------


class UnknownMarketError(LookupError):
    pass


class UnknownUserError(LookupError):
    pass


def resolve_market(conn: sa.Connection, market_ref: str | int) -> int:
    """Our internal id for a market given by internal id or source id."""
    row = get_market(conn, str(market_ref).strip())
    if row is None:
        raise UnknownMarketError(f"no market {market_ref!r} (by internal id or source id)")
    return row.id


def _user_id(conn: sa.Connection, email: str) -> int:
    user = get_user(conn, email)
    if user is None:
        raise UnknownUserError(f"no user {email!r}: `prediction-pipeline users add {email}`")
    return user.id


def add_watch_items(
    conn: sa.Connection, items: Sequence[tuple[int, int]], added_at: dt.datetime | None = None
) -> int:
    """Watch (user id, market id) pairs; pairs already watched keep their `added_at`.
    Returns how many were new."""
    now = added_at or dt.datetime.now(dt.UTC)
    added = 0
    unique = list(dict.fromkeys(items))
    for chunk in batched(unique, SQL_BATCH):
        insert = dialect_insert(conn, watchlist_items).on_conflict_do_nothing(
            index_elements=["user_id", "market_id"]
        )
        result = conn.execute(
            insert.returning(watchlist_items.c.id),
            [{"user_id": u, "market_id": m, "added_at": now} for u, m in chunk],
        )
        added += len(result.all())
    return added


def watch(conn: sa.Connection, email: str, market_ref: str | int) -> tuple[int, bool]:
    """(market id, whether it was newly added) for `email` watching `market_ref`."""
    market_id = resolve_market(conn, market_ref)
    return market_id, add_watch_items(conn, [(_user_id(conn, email), market_id)]) == 1


def unwatch(conn: sa.Connection, email: str, market_ref: str | int) -> tuple[int, bool]:
    """(market id, whether an item was removed)."""
    market_id = resolve_market(conn, market_ref)
    result = conn.execute(
        sa.delete(watchlist_items).where(
            watchlist_items.c.user_id == _user_id(conn, email),
            watchlist_items.c.market_id == market_id,
        )
    )
    return market_id, result.rowcount == 1


def list_watchlist(conn: sa.Connection, email: str | None = None) -> list[sa.Row]:
    """Watched markets (one row per user and market) with their latest price and status."""
    latest_day = (
        sa.select(sa.func.max(market_snapshots.c.day))
        .where(market_snapshots.c.market_id == markets.c.id)
        .scalar_subquery()
    )
    latest = market_snapshots.alias("latest")
    query = (
        sa.select(
            users.c.email,
            markets.c.id.label("market_id"),
            markets.c.source_id,
            markets.c.question,
            markets.c.status,
            latest.c.yes_price,
            watchlist_items.c.added_at,
        )
        .join(users, users.c.id == watchlist_items.c.user_id)
        .join(markets, markets.c.id == watchlist_items.c.market_id)
        .outerjoin(latest, sa.and_(latest.c.market_id == markets.c.id, latest.c.day == latest_day))
        .order_by(users.c.email, watchlist_items.c.added_at, markets.c.id)
    )
    if email is not None:
        query = query.where(users.c.email == normalize_email(email))
    return list(conn.execute(query))
