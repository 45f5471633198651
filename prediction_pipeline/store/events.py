"""The event log of on-demand work: one row per change of a request or session (queued,
running, step, model done or failed, settled), written in the same transaction as the
change itself. The API streams it as Server-Sent Events; the row id is the event id, so
a client that reconnects with Last-Event-ID gets exactly what it missed."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from prediction_pipeline.store.tables import on_demand_events

# The events after which nothing more happens to the item.
FINAL_EVENTS = ("succeeded", "failed", "settled")


def record(conn: sa.Connection, item_id: str, kind: str, event: str, **data) -> None:
    conn.execute(
        sa.insert(on_demand_events).values(
            item_id=item_id,
            kind=kind,
            event=event,
            data=data,
            created_at=dt.datetime.now(dt.UTC),
        )
    )


def events_after(
    conn: sa.Connection, item_id: str, after_id: int = 0, limit: int = 100
) -> list[sa.Row]:
    return list(
        conn.execute(
            sa.select(on_demand_events)
            .where(on_demand_events.c.item_id == item_id, on_demand_events.c.id > after_id)
            .order_by(on_demand_events.c.id)
            .limit(limit)
        )
    )
