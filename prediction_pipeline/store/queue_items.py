"""What queued requests and sessions share: statuses, idempotency keys, the check that their
models are registered and enabled, reading the queue and marking an item running. The web app
inserts queued rows through `requests.enqueue_request` and `sessions.create_session`;
everything after that belongs to the pipeline."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from prediction_pipeline.store import events
from prediction_pipeline.store.tables import models, prediction_requests

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
COMPLETED, PARTIAL = "completed", "partial"
SESSION_FINAL = (COMPLETED, PARTIAL, FAILED)
REQUEST_FINAL = (SUCCEEDED, FAILED)
UNFINISHED = (QUEUED, RUNNING)
MAX_KEY_LENGTH = 200  # idempotency keys (the column's width)


class UnknownModel(LookupError):
    pass


class IdempotencyConflict(ValueError):
    """The key was already used for a different request or session."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_idempotency_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"an idempotency key must be a non-empty string of at most {MAX_KEY_LENGTH} "
            f"characters, got {key!r:.60}"
        )
    return key


def check_enabled_models(conn: sa.Connection, slugs: Sequence[str]) -> None:
    found = set(
        conn.scalars(
            sa.select(models.c.slug).where(models.c.slug.in_(slugs), models.c.enabled.is_(True))
        )
    )
    missing = [s for s in slugs if s not in found]
    if missing:
        raise UnknownModel(f"not registered or disabled: {', '.join(missing)}")


def first_with_key(
    conn: sa.Connection, table: sa.Table, user_id: int, key: str | None, **params
) -> str | None:
    """The id of the user's earlier request or session under this idempotency key, or None.
    The same key with other parameters is an IdempotencyConflict."""
    if key is None:
        return None
    first = conn.execute(
        sa.select(table).where(table.c.user_id == user_id, table.c.idempotency_key == key)
    ).first()
    if first is None:
        return None
    if any(getattr(first, name) != value for name, value in params.items()):
        kind = "request" if table is prediction_requests else "session"
        raise IdempotencyConflict(f"idempotency key {key!r} was already used for another {kind}")
    return first.id


def queued_items(conn: sa.Connection, table: sa.Table, limit: int) -> list[sa.Row]:
    query = (
        sa.select(table).where(table.c.status == QUEUED).order_by(table.c.created_at).limit(limit)
    )
    return list(conn.execute(query))


def mark_running(conn: sa.Connection, table: sa.Table, item_id: str, run_id: str) -> bool:
    """Mark a request or session running in this run (a re-launch takes it over); never
    one that is already final."""
    now = utc_now()
    result = conn.execute(
        sa.update(table)
        .where(table.c.id == item_id, table.c.status.in_(UNFINISHED))
        .values(status=RUNNING, run_id=run_id, started_at=now, updated_at=now)
    )
    if result.rowcount != 1:
        return False
    kind = "request" if table is prediction_requests else "session"
    events.record(conn, item_id, kind, RUNNING, run_id=run_id)
    return True
