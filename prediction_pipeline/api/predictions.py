"""/v1/predictions: queue one on-demand prediction, report it, stream its progress."""

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
from prediction_pipeline.api.schemas import Accepted, PredictionIn
from prediction_pipeline.services import api_access, on_demand

router = APIRouter(tags=["predictions"])


@router.post("/v1/predictions", status_code=202, response_model=Accepted)
async def post_prediction(
    body: PredictionIn,
    request: Request,
    api_key: Caller,
    key: IdempotencyKey,
    engine: Engine,
    limit: Limiter,
) -> JSONResponse:
    """Debit one credit and queue one prediction; follow `status_url` or `events_url`."""

    def action(scoped: str | None) -> tuple[int, dict]:
        limit.check(body.user)
        try:
            item_id = on_demand.request_prediction(
                engine,
                body.market,
                body.model,
                user_email=body.user,
                web_search=body.web_search,
                idempotency_key=scoped,
            )
        except (LookupError, ValueError) as exc:
            raise errors.from_service(exc) from None
        return accepted("predictions", item_id)

    return await once(request, engine, api_key, key, action)


def request_view(engine: sa.Engine, request_id: str) -> dict:
    item = events.status(engine, request_id, "request")
    return {
        "id": item["id"],
        "status": item["status"],
        "model": item["model"],
        "market": item["market_id"],
        "prediction": api_access.prediction_view(engine, item["prediction_id"]),
        "error": item["error"],
        "credits_charged": item["credits_charged"],
        "credits_refunded": item["credits_refunded"],
    }


@router.get("/v1/predictions/{request_id}")
def get_prediction(request_id: str, _key: Caller, engine: Engine) -> dict:
    """Where a prediction request stands, and the prediction once it is made."""
    return request_view(engine, request_id)


@router.get("/v1/predictions/{request_id}/events")
async def prediction_events(
    request_id: str, _key: Caller, engine: Engine, last_event_id: LastEventId = None
) -> EventSourceResponse:
    """Server-Sent Events: queued, running, succeeded or failed, then `end` with the
    final state. Reconnect with Last-Event-ID to get what was missed."""
    await run_in_threadpool(events.status, engine, request_id, "request")
    final_view = partial(request_view, engine)
    return EventSourceResponse(
        events.stream(engine, request_id, "request", last_event_id, final_view)
    )
