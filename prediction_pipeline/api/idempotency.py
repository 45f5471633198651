"""Idempotency-Key for the POST routes: one answer per key and request."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from prediction_pipeline.api import errors
from prediction_pipeline.api.schemas import Accepted
from prediction_pipeline.services import api_access
from prediction_pipeline.services.api_access import ApiKey

Action = Callable[[str | None], tuple[int, dict]]


async def once(
    request: Request, engine: sa.Engine, api_key: ApiKey, key: str | None, action: Action
) -> JSONResponse:
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


def accepted(kind: str, item_id: str) -> tuple[int, dict]:
    """The 202 answer for a queued prediction or session."""
    url = f"/v1/{kind}/{item_id}"
    body = Accepted(id=item_id, status="queued", status_url=url, events_url=f"{url}/events")
    return 202, body.model_dump()
