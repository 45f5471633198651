"""Requests and sessions whose run died: find them, queue them again."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from prediction_pipeline.store import events
from prediction_pipeline.store.queue_items import QUEUED, UNFINISHED, utc_now
from prediction_pipeline.store.tables import prediction_requests, prediction_sessions


def unfinished_items(conn: sa.Connection) -> list[tuple[str, str, str, dt.datetime, int]]:
    """(kind, id, status, updated_at, launches) of requests and sessions not final yet."""
    items = []
    for kind, table in (("request", prediction_requests), ("session", prediction_sessions)):
        query = sa.select(table.c.id, table.c.status, table.c.updated_at, table.c.launches).where(
            table.c.status.in_(UNFINISHED)
        )
        for row in conn.execute(query):
            updated = (
                row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=dt.UTC)
            )
            items.append((kind, row.id, row.status, updated, row.launches))
    return items


def requeue(conn: sa.Connection, kind: str, item_id: str) -> bool:
    """Queue again after a dead run; the launch count is part of the next run key, so the
    sensor launches a new run instead of being deduplicated against the dead one. Only an
    unfinished item: one that finished since recovery looked is left alone (False)."""
    table = prediction_requests if kind == "request" else prediction_sessions
    result = conn.execute(
        sa.update(table)
        .where(table.c.id == item_id, table.c.status.in_(UNFINISHED))
        .values(status=QUEUED, launches=table.c.launches + 1, updated_at=utc_now())
    )
    if result.rowcount != 1:
        return False
    events.record(conn, item_id, kind, "requeued")
    return True
