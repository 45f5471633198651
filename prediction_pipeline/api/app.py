"""The HTTP API of the web app: enqueue predictions and sessions (202 + id), report their
progress, top up credits. It calls the same services as the CLI and never imports `defs`:
the runs are launched by the on-demand sensors in Dagster. One router per area
(health, predictions, sessions, credits, unsubscribe); `create_app` only assembles them."""

from __future__ import annotations

import os

import sqlalchemy as sa
from fastapi import FastAPI

from prediction_pipeline.api import credits, errors, health, predictions, sessions, unsubscribe
from prediction_pipeline.api.body_limit import BodyLimit
from prediction_pipeline.api.dependencies import RateLimit
from prediction_pipeline.core.digests import DEV_UNSUBSCRIBE_SECRET
from prediction_pipeline.store.db import default_database_url, make_engine

MAX_BODY_BYTES = 64 * 1024
UNSUBSCRIBE_SECRET_ENV = "PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET"
RATE_LIMIT_ENV = "PREDICTION_PIPELINE_API_RATE_PER_MINUTE"
DEFAULT_RATE_PER_MINUTE = 10


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
    # The routers' dependencies (api.dependencies) read these.
    app.state.engine = engine
    app.state.rate_limit = RateLimit(engine, per_minute)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    errors.install(app)
    app.include_router(unsubscribe.router(engine, secret))
    app.include_router(health.router)
    app.include_router(predictions.router)
    app.include_router(sessions.router)
    app.include_router(credits.router)
    return app
