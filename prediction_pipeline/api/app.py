"""The HTTP API of the web app: enqueue predictions and sessions (202 + id), report their
progress, top up credits. It calls the same services as the CLI and never imports `defs`:
the runs are launched by the on-demand sensors in Dagster."""

# No `from __future__ import annotations` here: FastAPI reads the dependency annotations
# (`Caller`, `IdempotencyKey`, local to create_app) at definition time.
import asyncio
import json
import os
import time
from datetime import UTC
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from prediction_pipeline.api import errors, unsubscribe
from prediction_pipeline.api.body_limit import BodyLimit
from prediction_pipeline.api.schemas import Accepted, Balance, CreditsIn, PredictionIn, SessionIn
from prediction_pipeline.core.digests import DEV_UNSUBSCRIBE_SECRET
from prediction_pipeline.services import api_access, on_demand
from prediction_pipeline.services.api_access import FINAL_EVENTS, ApiKey
from prediction_pipeline.store.db import default_database_url, make_engine

MAX_BODY_BYTES = 64 * 1024
FINAL_STATUS = ("succeeded", "failed", "completed", "partial")
UNSUBSCRIBE_SECRET_ENV = "PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET"
RATE_LIMIT_ENV = "PREDICTION_PIPELINE_API_RATE_PER_MINUTE"
DEFAULT_RATE_PER_MINUTE = 10
MAX_CLIENT_KEY = 150  # Idempotency-Key; scoped by API key before it reaches the services
EVENT_POLL_SECONDS = 0.5  # how often an open event stream looks for new events
MAX_STREAM_SECONDS = 30 * 60  # a stream ends after this; the client reconnects

_bearer = HTTPBearer(auto_error=False)


def create_app(
    engine: sa.Engine | None = None,
    *,
    rate_per_minute: int | None = None,
    unsubscribe_secret: str | None = None,
) -> FastAPI:
    engine = engine or make_engine(default_database_url())
    # The digests' HMAC key (the same variable as the pipeline's); offline, the dev secret
    # the outbox digests were signed with.
    secret = unsubscribe_secret or os.environ.get(UNSUBSCRIBE_SECRET_ENV) or DEV_UNSUBSCRIBE_SECRET
    per_minute = rate_per_minute or int(os.environ.get(RATE_LIMIT_ENV, DEFAULT_RATE_PER_MINUTE))
    app = FastAPI(
        title="prediction_pipeline",
        version="1",
        description="On-demand LLM forecasts on prediction markets. Every /v1 call needs "
        "`Authorization: Bearer <key>` (`prediction-pipeline api keys create NAME`).",
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    errors.install(app)
    app.include_router(unsubscribe.router(engine, secret))

    def caller(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        key = api_access.authenticate(engine, creds.credentials) if creds else None
        if key is None:
            error = errors.ApiError(401, "unauthorized", "a valid API key is required")
            error.headers["WWW-Authenticate"] = "Bearer"
            raise error
        return key

    def idempotency_key(
        value: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> str | None:
        if value is not None and not 1 <= len(value) <= MAX_CLIENT_KEY:
            raise errors.invalid("Idempotency-Key", f"1 to {MAX_CLIENT_KEY} characters")
        return value

    Caller = Annotated[ApiKey, Depends(caller)]
    LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
    IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]

    async def once(request: Request, api_key: ApiKey, key: str | None, action) -> JSONResponse:
        """Run `action(scoped_key)` once per Idempotency-Key: a retry with the same body
        gets the first (successful) answer; the same key with another body is refused.
        Failed answers are not kept, so a fixed request may reuse its key."""
        if key is None:
            status, body = await run_in_threadpool(action, None)
            return JSONResponse(body, status_code=status)
        endpoint = f"{request.method} {request.url.path}"
        fingerprint = api_access.fingerprint(endpoint.encode() + b"\n" + await request.body())
        first = await run_in_threadpool(api_access.first_answer, engine, api_key, key)
        if first is not None:
            if first.fingerprint != fingerprint:
                raise errors.ApiError(
                    409, "idempotency_conflict", "Idempotency-Key was used for another request"
                )
            return JSONResponse(first.response, status_code=first.status_code)
        status, body = await run_in_threadpool(action, f"api{api_key.id}:{key}")
        await run_in_threadpool(
            api_access.save_answer,
            engine,
            api_key,
            key,
            endpoint=endpoint,
            fingerprint=fingerprint,
            status_code=status,
            response=body,
        )
        return JSONResponse(body, status_code=status)

    def throttle(user: str) -> None:
        wait = api_access.retry_after(engine, user, per_minute)
        if wait is not None:
            error = errors.ApiError(
                429, "rate_limited", f"at most {per_minute} predictions and sessions a minute"
            )
            error.headers["Retry-After"] = str(wait)
            raise error

    def accepted(kind: str, item_id: str) -> tuple[int, dict]:
        url = f"/v1/{kind}/{item_id}"
        body = Accepted(id=item_id, status="queued", status_url=url, events_url=f"{url}/events")
        return 202, body.model_dump()

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> JSONResponse:
        """The app database answers and its schema is current."""
        reason = api_access.readiness(engine)
        if reason is not None:
            return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.post("/v1/predictions", status_code=202, response_model=Accepted, tags=["predictions"])
    async def post_prediction(
        body: PredictionIn,
        request: Request,
        api_key: Caller,
        key: IdempotencyKey,
    ) -> JSONResponse:
        """Debit one credit and queue one prediction; follow `status_url` or `events_url`."""

        def action(scoped: str | None) -> tuple[int, dict]:
            throttle(body.user)
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

        return await once(request, api_key, key, action)

    def request_view(request_id: str) -> dict:
        item = _status(request_id, "request")
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

    @app.get("/v1/predictions/{request_id}", tags=["predictions"])
    def get_prediction(request_id: str, _key: Caller) -> dict:
        """Where a prediction request stands, and the prediction once it is made."""
        return request_view(request_id)

    @app.post("/v1/sessions", status_code=202, response_model=Accepted, tags=["sessions"])
    async def post_session(
        body: SessionIn,
        request: Request,
        api_key: Caller,
        key: IdempotencyKey,
    ) -> JSONResponse:
        """Debit one credit per model and queue a multi-model session (402 if the balance
        does not cover it); follow `status_url` or `events_url`."""

        def action(scoped: str | None) -> tuple[int, dict]:
            throttle(body.user)
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

        return await once(request, api_key, key, action)

    def session_view(session_id: str) -> dict:
        item = _status(session_id, "session")
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

    @app.get("/v1/sessions/{session_id}", tags=["sessions"])
    def get_session(session_id: str, _key: Caller) -> dict:
        """Status, current step, each model's progress and result, credits."""
        return session_view(session_id)

    @app.post("/v1/credits", response_model=Balance, tags=["credits"])
    async def post_credits(
        body: CreditsIn,
        request: Request,
        api_key: Caller,
        key: IdempotencyKey,
    ) -> JSONResponse:
        """Top a user up (the user is created if new); returns the new balance."""

        def action(scoped: str | None) -> tuple[int, dict]:
            try:
                balance = on_demand.grant(
                    engine, body.user, body.amount, note=body.reason, idempotency_key=scoped
                )
            except (LookupError, ValueError) as exc:
                raise errors.from_service(exc) from None
            return 200, Balance(user=body.user, balance=balance).model_dump()

        return await once(request, api_key, key, action)

    @app.get("/v1/predictions/{request_id}/events", tags=["predictions"])
    async def prediction_events(
        request_id: str, _key: Caller, last_event_id: LastEventId = None
    ) -> EventSourceResponse:
        """Server-Sent Events: queued, running, succeeded or failed, then `end` with the
        final state. Reconnect with Last-Event-ID to get what was missed."""
        await run_in_threadpool(_status, request_id, "request")
        return EventSourceResponse(_stream(request_id, "request", last_event_id))

    @app.get("/v1/sessions/{session_id}/events", tags=["sessions"])
    async def session_events(
        session_id: str, _key: Caller, last_event_id: LastEventId = None
    ) -> EventSourceResponse:
        """Server-Sent Events: queued, running, each step, each model done or failed,
        settled, then `end` with the final state. Reconnect with Last-Event-ID to get what
        was missed."""
        await run_in_threadpool(_status, session_id, "session")
        return EventSourceResponse(_stream(session_id, "session", last_event_id))

    async def _stream(item_id: str, kind: str, last_event_id: str | None):
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        final_views = {"request": request_view, "session": session_view}
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
                ended = await run_in_threadpool(is_final, item_id, kind)
            first = False
            if ended:
                view = await run_in_threadpool(final_views[kind], item_id)
                yield ServerSentEvent(data=json.dumps(view), event="end", id=str(after))
                return
            if not rows:
                await asyncio.sleep(EVENT_POLL_SECONDS)

    def is_final(item_id: str, kind: str) -> bool:
        return _status(item_id, kind)["status"] in FINAL_STATUS

    def _status(item_id: str, kind: str) -> dict:
        try:
            item = on_demand.status(engine, item_id)
        except LookupError:
            item = None
        if item is None or item["kind"] != kind:
            raise errors.ApiError(404, "not_found", f"no {kind} {item_id!r}")
        return item

    return app
