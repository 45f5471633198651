"""The digest delivery ledger: exactly one email per (user, day).

Ledger protocol, one row per (user, day) in `digest_deliveries` (UNIQUE(user_id, day)):

- `claim` (before sending, its own committed transaction): the row is created or taken over
  as `pending` with `attempts + 1`, a fresh `claim_token` (the delivery holding it), the
  Dagster `run_id`, `claimed_at` and `lease_expires_at` (claimed_at + the holder's lease).
  Only *claimable* rows are taken: absent, `skipped`, `failed` with a transient error, or
  `pending` whose claim is dead (its run finished, or its lease has expired). `sent` rows and
  permanent failures are never taken, and a live claim of another delivery is never taken, so
  two runs of one day cannot both send.
- `refresh_claim` (right before a message is handed over) / `claim_retry` (before each further
  attempt, also `attempts + 1`): a fresh lease, only if we still hold the claim.
- `mark_sent` / `mark_failed` / `release` (after): only if we still hold the claim; False
  means another delivery took the row over (our lease had run out).

All of them are single conditional statements, atomic on SQLite and PostgreSQL alike.

Every lease decision uses the database's clock (`CURRENT_TIMESTAMP`), never the clock of
the process asking: a sender whose clock runs ahead cannot see a live claim as expired.
Leases shorter than `MIN_LEASE` are refused: a lease must outlast one send.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.core.batching import SQL_BATCH, batched
from prediction_pipeline.core.digests import PreviousDigest
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import digest_deliveries

PENDING, SENT, FAILED, SKIPPED = "pending", "sent", "failed", "skipped"
MIN_LEASE = dt.timedelta(minutes=1)
TRANSIENT, PERMANENT = "transient", "permanent"
NOTHING_NEW, OPTED_OUT = "nothing_new", "opted_out"
_ERROR_CHARS = 2000

d = digest_deliveries.c


@dataclass(frozen=True)
class Delivery:
    user_id: int
    status: str
    attempts: int
    error_kind: str | None
    run_id: str | None
    claim_token: str | None
    claimed_at: dt.datetime | None
    lease_live: bool  # a `pending` claim whose lease has not expired (database clock)


def deliveries(conn: sa.Connection, day: dt.date, user_ids: Sequence[int]) -> dict[int, Delivery]:
    found: dict[int, Delivery] = {}
    live = sa.case((d.lease_expires_at > db_now(conn), 1), else_=0).label("lease_live")
    for chunk in batched(user_ids, SQL_BATCH):
        query = (
            sa.select(
                d.user_id, d.status, d.attempts, d.error_kind, d.run_id, d.claim_token, d.claimed_at
            )
            .add_columns(live)
            .where(d.day == day, d.user_id.in_(chunk))
        )
        for r in conn.execute(query):
            found[r.user_id] = Delivery(*r[:-1], lease_live=bool(r.lease_live))
    return found


def previous_digests(
    conn: sa.Connection, day: dt.date, user_ids: Sequence[int]
) -> dict[int, PreviousDigest]:
    """Each user's latest digest sent for a day before `day`."""
    found: dict[int, PreviousDigest] = {}
    for chunk in batched(user_ids, SQL_BATCH):
        latest = (
            sa.select(d.user_id, sa.func.max(d.day).label("day"))
            .where(d.user_id.in_(chunk), d.day < day, d.status == SENT)
            .group_by(d.user_id)
            .subquery()
        )
        query = sa.select(d.user_id, d.day, d.sent_at).join(
            latest, sa.and_(d.user_id == latest.c.user_id, d.day == latest.c.day)
        )
        for r in conn.execute(query):
            found[r.user_id] = PreviousDigest(r.day, r.sent_at)
    return found


def check_lease(lease: dt.timedelta) -> dt.timedelta:
    """A claim's lease must outlast one send; shorter ones let two deliveries both send."""
    if lease < MIN_LEASE:
        raise ValueError(
            "the digest claim lease (pending_lease_minutes) must be at least "
            f"{MIN_LEASE.total_seconds() / 60:g} minute(s), got "
            f"{lease.total_seconds() / 60:g}: a claim that expires while its message is being "
            "sent lets another run send it too"
        )
    return lease


def db_now(conn: sa.Connection, plus: dt.timedelta | None = None) -> sa.ColumnElement:
    """The database's current time (+ `plus`), as an SQL expression: lease decisions never
    use the clock of the process asking, which may be skewed."""
    if conn.dialect.name == "sqlite":
        # The text format SQLAlchemy stores DateTime in on SQLite (microseconds from the
        # milliseconds of %f), so that comparisons with stored values are exact.
        modifiers = [] if plus is None else [f"{plus.total_seconds():+.3f} seconds"]
        return sa.func.strftime("%Y-%m-%d %H:%M:%f000", "now", *modifiers)
    now = sa.func.now()  # the start of the (short) transaction: never later than real time
    return now if plus is None else now + sa.literal(plus, sa.Interval())


def _lease(conn: sa.Connection, lease: dt.timedelta) -> dict:
    """The values that give a claim a fresh lease of `lease` from now (database clock)."""
    check_lease(lease)
    return {"claimed_at": db_now(conn), "lease_expires_at": db_now(conn, lease)}


def _claimable(conn: sa.Connection, dead_runs: Collection[str]):
    """Rows a new delivery may take over (see the module docstring)."""
    # Plain comparisons, not IN: an expanding IN cannot be used in executemany upserts.
    dead_claim = sa.or_(
        d.lease_expires_at.is_(None),  # no lease: claimed before migration 0009
        d.lease_expires_at <= db_now(conn),
        *(d.run_id == sa.literal(run_id, sa.String) for run_id in sorted(dead_runs)),
    )
    return sa.or_(
        d.status == SKIPPED,
        sa.and_(d.status == FAILED, sa.func.coalesce(d.error_kind, TRANSIENT) != PERMANENT),
        sa.and_(d.status == PENDING, dead_claim),
    )


def is_claimable(row: Delivery | None, dead_runs: Collection[str]) -> bool:
    """The Python twin of `_claimable`, to classify rows before touching them (the lease
    was judged by the database when the row was read)."""
    if row is None or row.status == SKIPPED:
        return True
    if row.status == FAILED:
        return row.error_kind != PERMANENT
    if row.status == PENDING:
        return not row.lease_live or row.run_id in dead_runs
    return False


def record_skips(
    conn: sa.Connection,
    day: dt.date,
    reasons: Mapping[int, str],
    *,
    dead_runs: Collection[str] = (),
    now: dt.datetime | None = None,
) -> set[int]:
    """Record `skipped` (with its reason) for users not sent a digest, unless their row is
    sent, permanently failed or held by a live claim. Returns the users written."""
    if not reasons:
        return set()
    now = now or dt.datetime.now(dt.UTC)
    written: set[int] = set()
    items = sorted(reasons.items())
    for chunk in batched(items, SQL_BATCH):
        insert = dialect_insert(conn, digest_deliveries)
        statement = insert.on_conflict_do_update(
            index_elements=["user_id", "day"],
            set_={
                "status": SKIPPED,
                "skip_reason": insert.excluded.skip_reason,
                "error_kind": None,
                "claim_token": None,
                "lease_expires_at": None,
                "updated_at": insert.excluded.updated_at,
            },
            where=_claimable(conn, dead_runs),
        ).returning(d.user_id)
        rows = [
            {
                "user_id": user_id,
                "day": day,
                "status": SKIPPED,
                "attempts": 0,
                "skip_reason": reason,
                "created_at": now,
                "updated_at": now,
            }
            for user_id, reason in chunk
        ]
        written.update(conn.scalars(statement, rows).all())
    return written


def claim(
    conn: sa.Connection,
    day: dt.date,
    message_ids: Mapping[int, str],
    *,
    token: str,
    run_id: str | None,
    lease: dt.timedelta,
    dead_runs: Collection[str] = (),
    now: dt.datetime | None = None,
) -> set[int]:
    """Claim the users of `message_ids` ({user id: Message-ID}) for one send each: create
    or take over their rows as `pending` with `attempts + 1` and a lease of `lease`.
    Commit before sending. Returns the users claimed; the others are sent, permanently
    failed or held elsewhere."""
    if not message_ids:
        return set()
    now = now or dt.datetime.now(dt.UTC)
    lease_values = _lease(conn, lease)
    claimed: set[int] = set()
    for chunk in batched(sorted(message_ids.items()), SQL_BATCH):
        insert = dialect_insert(conn, digest_deliveries).values(**lease_values)
        statement = insert.on_conflict_do_update(
            index_elements=["user_id", "day"],
            set_={
                "status": PENDING,
                "attempts": d.attempts + 1,
                "skip_reason": None,
                "error_kind": None,
                "message_id": insert.excluded.message_id,
                "run_id": insert.excluded.run_id,
                "claim_token": insert.excluded.claim_token,
                **lease_values,
                "updated_at": insert.excluded.updated_at,
            },
            where=_claimable(conn, dead_runs),
        ).returning(d.user_id)
        rows = [
            {
                "user_id": user_id,
                "day": day,
                "status": PENDING,
                "attempts": 1,
                "message_id": message_id,
                "run_id": run_id,
                "claim_token": token,
                "created_at": now,
                "updated_at": now,
            }
            for user_id, message_id in chunk
        ]
        claimed.update(conn.scalars(statement, rows).all())
    return claimed


def _held(day: dt.date, user_id: int, token: str):
    return sa.and_(d.day == day, d.user_id == user_id, d.claim_token == token, d.status == PENDING)


def _update_held(conn: sa.Connection, day: dt.date, user_id: int, token: str, **values) -> bool:
    """Update the row only while this claim still holds it (fencing); True if it did."""
    result = conn.execute(
        sa.update(digest_deliveries).where(_held(day, user_id, token)).values(**values)
    )
    return result.rowcount == 1


def claim_retry(
    conn: sa.Connection,
    day: dt.date,
    user_id: int,
    token: str,
    last_error: str,
    lease: dt.timedelta,
    now: dt.datetime | None = None,
) -> bool:
    """Before a further attempt: `attempts + 1`, a fresh lease and the error of the
    attempt before, if we still hold the claim. Commit right before sending."""
    now = now or dt.datetime.now(dt.UTC)
    return _update_held(
        conn,
        day,
        user_id,
        token,
        attempts=d.attempts + 1,
        last_error=last_error[:_ERROR_CHARS],
        **_lease(conn, lease),
        updated_at=now,
    )


def refresh_claim(
    conn: sa.Connection,
    day: dt.date,
    user_id: int,
    token: str,
    lease: dt.timedelta,
    now: dt.datetime | None = None,
) -> bool:
    """A fresh lease right before the message is handed over (after any wait in the queue
    or for the rate limit), so the whole lease covers the send. False: the claim was lost."""
    now = now or dt.datetime.now(dt.UTC)
    return _update_held(conn, day, user_id, token, **_lease(conn, lease), updated_at=now)


def mark_sent(
    conn: sa.Connection,
    day: dt.date,
    user_id: int,
    token: str,
    provider_message_id: str | None,
    now: dt.datetime | None = None,
) -> bool:
    now = now or dt.datetime.now(dt.UTC)
    return _update_held(
        conn,
        day,
        user_id,
        token,
        status=SENT,
        provider_message_id=(provider_message_id or "")[:255] or None,
        sent_at=now,
        claim_token=None,
        lease_expires_at=None,
        updated_at=now,
    )


def mark_failed(
    conn: sa.Connection,
    day: dt.date,
    user_id: int,
    token: str,
    kind: str,
    error: str,
    now: dt.datetime | None = None,
) -> bool:
    """`permanent` failures are final for the day; `transient` ones are claimable again."""
    now = now or dt.datetime.now(dt.UTC)
    return _update_held(
        conn,
        day,
        user_id,
        token,
        status=FAILED,
        error_kind=kind,
        last_error=error[:_ERROR_CHARS],
        claim_token=None,
        lease_expires_at=None,
        updated_at=now,
    )


def release(
    conn: sa.Connection,
    day: dt.date,
    user_id: int,
    token: str,
    reason: str,
    now: dt.datetime | None = None,
) -> bool:
    """Give back a claim whose message was never handed to the transport (the batch stopped):
    the attempt is not counted, and the row is claimable again at once."""
    now = now or dt.datetime.now(dt.UTC)
    return _update_held(
        conn,
        day,
        user_id,
        token,
        status=FAILED,
        error_kind=TRANSIENT,
        attempts=d.attempts - 1,
        last_error=f"not sent: {reason}"[:_ERROR_CHARS],
        claim_token=None,
        lease_expires_at=None,
        updated_at=now,
    )


def pending_run_ids(conn: sa.Connection, day: dt.date) -> list[str]:
    """The runs holding `pending` claims for `day` (the caller asks which ones are dead)."""
    query = (
        sa.select(d.run_id).where(d.day == day, d.status == PENDING, d.run_id.is_not(None))
    ).distinct()
    return sorted(conn.scalars(query))


def unresolved(conn: sa.Connection, day: dt.date, user_ids: Collection[int]) -> dict[int, str]:
    """Of `user_ids`, those whose day is not settled yet, with the run holding their claim
    ("" when none does). Settled: `sent`, `failed` for good, or `skipped` with a reason."""
    found: dict[int, str] = {}
    for chunk in batched(sorted(user_ids), SQL_BATCH):
        query = sa.select(d.user_id, d.status, d.error_kind, d.run_id).where(
            d.day == day, d.user_id.in_(chunk)
        )
        for r in conn.execute(query):
            settled = r.status in (SENT, SKIPPED) or (
                r.status == FAILED and r.error_kind == PERMANENT
            )
            if not settled:
                found[r.user_id] = (r.run_id or "") if r.status == PENDING else ""
    return found
