"""Data-quality queries on the digest ledger, behind the digest asset checks and the CLI."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from prediction_pipeline.store.digest_ledger import FAILED, PENDING, SENT, SKIPPED, d, db_now
from prediction_pipeline.store.tables import digest_deliveries, users


def duplicate_sent(conn: sa.Connection, day: dt.date) -> int:
    """Users with more than one `sent` row for `day` (the UNIQUE constraint forbids it)."""
    dupes = (
        sa.select(d.user_id)
        .where(d.day == day, d.status == SENT)
        .group_by(d.user_id)
        .having(sa.func.count() > 1)
        .subquery()
    )
    return conn.scalar(sa.select(sa.func.count()).select_from(dupes)) or 0


def ledger_is_unique_per_user_and_day(conn: sa.Connection) -> bool:
    """Whether the database really holds UNIQUE(user_id, day) on the ledger."""
    inspector = sa.inspect(conn)
    keys = [set(u["column_names"]) for u in inspector.get_unique_constraints("digest_deliveries")]
    keys += [
        set(i["column_names"])
        for i in inspector.get_indexes("digest_deliveries")
        if i.get("unique")
    ]
    return {"user_id", "day"} in keys


def status_counts(conn: sa.Connection, day: dt.date) -> dict[str, int]:
    query = sa.select(d.status, sa.func.count()).where(d.day == day).group_by(d.status)
    counts = dict.fromkeys((SENT, PENDING, FAILED, SKIPPED), 0)
    counts.update({status: n for status, n in conn.execute(query)})
    return counts


def stale_pending(conn: sa.Connection, day: dt.date) -> int:
    """`pending` rows whose lease has expired (a crashed delivery): the next run retries them."""
    expired = sa.or_(d.lease_expires_at.is_(None), d.lease_expires_at <= db_now(conn))
    query = sa.select(sa.func.count()).where(d.day == day, d.status == PENDING, expired)
    return conn.scalar(query) or 0


def delivery_rows(conn: sa.Connection, day: dt.date) -> list[sa.Row]:
    """The ledger of `day` with each user's email (for the CLI and tests)."""
    query = (
        sa.select(digest_deliveries, users.c.email)
        .join(users, users.c.id == d.user_id)
        .where(d.day == day)
        .order_by(d.user_id)
    )
    return list(conn.execute(query))
