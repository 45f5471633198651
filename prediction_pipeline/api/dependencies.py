"""What the /v1 routes share, as FastAPI dependencies: the app database (set on `app.state`
by `create_app`), the caller's API key, the Idempotency-Key header and the per-user rate
limit."""

# No `from __future__ import annotations`: FastAPI reads these annotations at definition time.
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from prediction_pipeline.api import errors
from prediction_pipeline.services import api_access
from prediction_pipeline.services.api_access import ApiKey

MAX_CLIENT_KEY = 150  # Idempotency-Key; scoped by API key before it reaches the services

_bearer = HTTPBearer(auto_error=False)


class RateLimit:
    """At most `per_minute` predictions and sessions a minute for one user."""

    def __init__(self, engine: sa.Engine, per_minute: int) -> None:
        self.engine, self.per_minute = engine, per_minute

    def check(self, user: str) -> None:
        wait = api_access.retry_after(self.engine, user, self.per_minute)
        if wait is not None:
            error = errors.ApiError(
                429, "rate_limited", f"at most {self.per_minute} predictions and sessions a minute"
            )
            error.headers["Retry-After"] = str(wait)
            raise error


# async, so that FastAPI calls them in the event loop rather than in a worker thread.
async def app_engine(request: Request) -> sa.Engine:
    return request.app.state.engine


async def rate_limit(request: Request) -> RateLimit:
    return request.app.state.rate_limit


def caller(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    engine = request.app.state.engine
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


Engine = Annotated[sa.Engine, Depends(app_engine)]
Limiter = Annotated[RateLimit, Depends(rate_limit)]
Caller = Annotated[ApiKey, Depends(caller)]
IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
