"""Where an on-demand prediction or session stands, and its progress as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC

import sqlalchemy as sa
from sse_starlette.sse import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from prediction_pipeline.api import errors
from prediction_pipeline.services import api_access, on_demand
from prediction_pipeline.services.api_access import FINAL_EVENTS

FINAL_STATUS = ("succeeded", "failed", "completed", "partial")
EVENT_POLL_SECONDS = 0.5  # how often an open event stream looks for new events
MAX_STREAM_SECONDS = 30 * 60  # a stream ends after this; the client reconnects


def status(engine: sa.Engine, item_id: str, kind: str) -> dict:
    """The item's status; 404 if there is no such item of this kind."""
    try:
        item = on_demand.status(engine, item_id)
    except LookupError:
        item = None
    if item is None or item["kind"] != kind:
        raise errors.ApiError(404, "not_found", f"no {kind} {item_id!r}")
    return item


def _is_final(engine: sa.Engine, item_id: str, kind: str) -> bool:
    return status(engine, item_id, kind)["status"] in FINAL_STATUS


async def stream(
    engine: sa.Engine,
    item_id: str,
    kind: str,
    last_event_id: str | None,
    final_view: Callable[[str], dict],
) -> AsyncIterator[ServerSentEvent]:
    """The item's events after `last_event_id`, then `end` with `final_view(item_id)`."""
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    deadline = time.monotonic() + MAX_STREAM_SECONDS
    first = True
    while time.monotonic() < deadline:
        rows = await run_in_threadpool(api_access.events_after, engine, item_id, after)
        ended = False
        for row in rows:
            after = row.id
            at = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            data = {**row.data, "at": at.isoformat()}
            yield ServerSentEvent(data=json.dumps(data), event=row.event, id=str(row.id))
            if row.event in FINAL_EVENTS:
                ended = True
                break
        if first and after and not rows:
            # Reconnected after the final event: say the final state again.
            ended = await run_in_threadpool(_is_final, engine, item_id, kind)
        first = False
        if ended:
            view = await run_in_threadpool(final_view, item_id)
            yield ServerSentEvent(data=json.dumps(view), event="end", id=str(after))
            return
        if not rows:
            await asyncio.sleep(EVENT_POLL_SECONDS)
