"""/v1/sessions: queue a multi-model session, report it, stream its progress."""

# No `from __future__ import annotations`: FastAPI reads the annotations at definition time.
from functools import partial

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from prediction_pipeline.api import errors, events
from prediction_pipeline.api.dependencies import (
    Caller,
    Engine,
    IdempotencyKey,
    LastEventId,
    Limiter,
)
from prediction_pipeline.api.idempotency import accepted, once
from prediction_pipeline.api.schemas import Accepted, SessionIn
from prediction_pipeline.services import api_access, on_demand

router = APIRouter(tags=["sessions"])


@router.post("/v1/sessions", status_code=202, response_model=Accepted)
async def post_session(
    body: SessionIn,
    request: Request,
    api_key: Caller,
    key: IdempotencyKey,
    engine: Engine,
    limit: Limiter,
) -> JSONResponse:
    """Debit one credit per model and queue a multi-model session (402 if the balance
    does not cover it); follow `status_url` or `events_url`."""

    def action(scoped: str | None) -> tuple[int, dict]:
        limit.check(body.user)
        try:
            item_id = on_demand.create_session(
                engine,
                body.market,
                body.models,
                body.user,
                web_search=body.web_search,
                idempotency_key=scoped,
            )
        except (LookupError, ValueError) as exc:
            raise errors.from_service(exc, model_field="models") from None
        return accepted("sessions", item_id)

    return await once(request, engine, api_key, key, action)


def session_view(engine: sa.Engine, session_id: str) -> dict:
    item = events.status(engine, session_id, "session")
    models = [
        {
            "model": model,
            **entry,
            "prediction": api_access.prediction_view(engine, entry.get("prediction_id")),
        }
        for model, entry in item["progress"].items()
    ]
    return {
        "id": item["id"],
        "status": item["status"],
        "step": item["step"],
        "market": item["market_id"],
        "models": models,
        "credits_charged": item["credits_charged"],
        "credits_refunded": item["credits_refunded"],
        "error": item["error"],
    }


@router.get("/v1/sessions/{session_id}")
def get_session(session_id: str, _key: Caller, engine: Engine) -> dict:
    """Status, current step, each model's progress and result, credits."""
    return session_view(engine, session_id)


@router.get("/v1/sessions/{session_id}/events")
async def session_events(
    session_id: str, _key: Caller, engine: Engine, last_event_id: LastEventId = None
) -> EventSourceResponse:
    """Server-Sent Events: queued, running, each step, each model done or failed,
    settled, then `end` with the final state. Reconnect with Last-Event-ID to get what
    was missed."""
    await run_in_threadpool(events.status, engine, session_id, "session")
    final_view = partial(session_view, engine)
    return EventSourceResponse(
        events.stream(engine, session_id, "session", last_event_id, final_view)
    )
