"""On-demand work: single prediction requests and multi-model sessions.

The small Python API (`request_prediction`, `create_session`, `grant`, `status`) is what the
web app calls: each returns at once with an id; sensors launch the runs. The execution
functions (`fulfil_request`, `research_session`, `predict_session_model`, `settle_session`)
are what those runs do, through the same prediction service as the daily batch.

One module (over 400 lines) on purpose: the API the web app calls and the runs that fulfil it
share the status, credits and idempotency rules.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import RetryStats
from prediction_pipeline.core.forecast import MarketContext
from prediction_pipeline.core.prompts import build_research_messages
from prediction_pipeline.services.forecasters import Forecaster
from prediction_pipeline.services.predict import PredictionTask, run_predictions
from prediction_pipeline.services.spend import SpendGuard
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import queue_items
from prediction_pipeline.store import requests as request_store
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store import users as user_store

CREDITS_PER_MODEL = 1

# What callers (the CLI, the HTTP API) catch and show, from the store that enforces it.
InsufficientCredits = credit_store.InsufficientCredits
IdempotencyConflict = queue_items.IdempotencyConflict
MAX_GRANT, MAX_MODELS = credit_store.MAX_GRANT, session_store.MAX_MODELS

# Builds the forecaster of a registered model (resources.Forecasters.build in production).
ForecasterFactory = Callable[[model_store.ModelSpec], Forecaster]


# -- the web app's API ---------------------------------------------------------------------


def _market_id(conn: sa.Connection, market_ref: str | int) -> int:
    market = market_store.get_market(conn, market_ref)
    if market is None:
        raise LookupError(f"no market {market_ref!r} (internal id or source id)")
    return market.id


def _user_id(conn: sa.Connection, email: object) -> int:
    if not isinstance(email, str) or not email.strip():
        raise ValueError(f"a user email is required, got {email!r:.80}")
    user = user_store.get_user(conn, email)
    if user is None:
        raise LookupError(f"no user {email!r}: grant credits first")
    return user.id


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r:.40}")
    return value


def request_prediction(
    engine: sa.Engine,
    market_ref: str | int,
    model: str,
    *,
    user_email: str,
    web_search: bool = False,
    idempotency_key: str | None = None,
) -> str:
    """Debit the user's credits and queue one prediction in one transaction; returns the
    request id at once (the work runs in Dagster). A failed request is refunded what it
    was charged. The same idempotency key again returns the first id and charges nothing."""
    _check_flag("web_search", web_search)
    key = queue_items.check_idempotency_key(idempotency_key)
    with engine.begin() as conn:
        return request_store.enqueue_request(
            conn,
            _market_id(conn, market_ref),
            model,
            user_id=_user_id(conn, user_email),
            web_search=web_search,
            credits=CREDITS_PER_MODEL,
            idempotency_key=key,
        )


def create_session(
    engine: sa.Engine,
    market_ref: str | int,
    models: list[str],
    user_email: str,
    *,
    web_search: bool = False,
    idempotency_key: str | None = None,
) -> str:
    """Check and debit credits and queue the session in one transaction; returns its id.
    The same idempotency key again returns the first id and charges nothing."""
    slugs = session_store.check_model_slugs(models)  # before any lock: bad input writes nothing
    _check_flag("web_search", web_search)
    key = queue_items.check_idempotency_key(idempotency_key)
    with engine.begin() as conn:
        return session_store.create_session(
            conn,
            _user_id(conn, user_email),
            _market_id(conn, market_ref),
            slugs,
            web_search=web_search,
            credits_per_model=CREDITS_PER_MODEL,
            idempotency_key=key,
        )


def grant(
    engine: sa.Engine,
    email: str,
    credits: int,
    *,
    note: str | None = None,
    idempotency_key: str | None = None,
) -> int:
    """Top a user up (created if needed); returns the new balance. Credits are a whole
    number from 1 to MAX_GRANT, checked before anything is written. The same idempotency
    key again for the same user grants nothing."""
    credits = credit_store.check_credits(credits)
    key = queue_items.check_idempotency_key(idempotency_key)
    with engine.begin() as conn:
        user, _ = user_store.add_user(conn, email)
        return credit_store.grant_credits(conn, user.id, credits, note, idempotency_key=key)


def status(engine: sa.Engine, item_id: str) -> dict:
    """Where a request or session stands; `status` first."""
    with engine.connect() as conn:
        request = request_store.get_request(conn, item_id)
        if request is not None:
            return {
                "status": request.status,
                "kind": "request",
                "id": request.id,
                "model": request.model_slug,
                "market_id": request.market_id,
                "prediction_id": request.prediction_id,
                "credits_charged": request.credits_charged,
                "credits_refunded": request.credits_refunded,
                "balance": credit_store.balance(conn, request.user_id) if request.user_id else None,
                "error": request.error,
                "run_id": request.run_id,
            }
        session = session_store.get_session(conn, item_id)
        if session is not None:
            return {
                "status": session.status,
                "kind": "session",
                "id": session.id,
                "step": session.current_step,
                "market_id": session.market_id,
                "progress": session.progress,
                "credits_charged": session.credits_charged,
                "credits_refunded": session.credits_refunded,
                "balance": credit_store.balance(conn, session.user_id),
                "error": session.error,
                "run_id": session.run_id,
            }
    raise LookupError(f"no request or session {item_id!r}")


# -- launching ----------------------------------------------------------------------------


def queued_requests(engine: sa.Engine, limit: int = 100) -> list[sa.Row]:
    """Requests waiting for a run (oldest first): what the requests sensor launches."""
    with engine.connect() as conn:
        return request_store.queued_requests(conn, limit=limit)


def queued_sessions(engine: sa.Engine, limit: int = 100) -> list[sa.Row]:
    """Sessions waiting for a run (oldest first): what the sessions sensor launches."""
    with engine.connect() as conn:
        return session_store.queued_sessions(conn, limit=limit)


# -- execution -----------------------------------------------------------------------------


@dataclass
class ModelOutcome:
    model: str
    prediction_id: int | None
    probability: float | None
    error: str | None
    cost_usd: float = 0.0


def _context(conn: sa.Connection, market_id: int, research: str | None = None) -> MarketContext:
    today = dt.datetime.now(dt.UTC).date()
    row = prediction_store.market_context_row(conn, market_id, today)
    if row is None:
        raise LookupError(f"market {market_id} is gone")
    history = prediction_store.price_history(conn, [market_id], today)
    return MarketContext(
        market_id=row.id,
        source_id=row.source_id,
        question=row.question,
        description=row.description or "",
        category=row.category,
        end_date=row.end_date,
        day=today,
        market_price=row.yes_price,
        price_history=tuple(history.get(market_id, ())),
        research=research,
    )


def _predict_one(
    engine: sa.Engine,
    build: ForecasterFactory,
    fatal_errors: tuple[type[BaseException], ...],
    model: str,
    ctx: MarketContext,
    *,
    web_search: bool,
    request_id: str | None = None,
    session_id: str | None = None,
    run_id: str | None = None,
) -> ModelOutcome:
    """One market, one model, through the batch's prediction service (same prompt, call,
    validation and storage); idempotent on the request or (session, model) key."""
    with engine.connect() as conn:
        spec = model_store.get_model(conn, model)
    if spec is None or not spec.enabled:
        return ModelOutcome(model, None, None, f"model {model} is not registered or disabled")
    try:
        forecaster = build(spec)
    except Exception as exc:  # e.g. no API key: this model fails, the session goes on
        return ModelOutcome(model, None, None, f"{type(exc).__name__}: {exc}")
    task = PredictionTask(
        model=model,
        day=ctx.day,
        contexts=[ctx],
        web_search=web_search,
        max_in_flight=1,
        max_cost_usd=spec.max_cost_usd,
        origin="request" if request_id else "session",
        request_id=request_id,
        session_id=session_id,
        run_id=run_id,
    )
    report = asyncio.run(run_predictions(engine, forecaster, task, fatal_errors=fatal_errors))
    with engine.connect() as conn:
        stored = prediction_store.linked_prediction(
            conn, model, request_id=request_id, session_id=session_id
        )
    if stored is not None:
        return ModelOutcome(model, stored.id, stored.probability, None, stored.cost_usd)
    error = report.fatal or (report.failures[0][1] if report.failures else None)
    if report.skipped_budget:
        error = f"spend cap of {model} reached for {ctx.day}"
    return ModelOutcome(model, None, None, error or "no prediction stored")


def fulfil_request(
    engine: sa.Engine,
    build: ForecasterFactory,
    fatal_errors: tuple[type[BaseException], ...],
    request_id: str,
    run_id: str,
) -> ModelOutcome:
    with engine.begin() as conn:
        request = request_store.get_request(conn, request_id, lock=True)
        if request is None:
            raise LookupError(f"no request {request_id}")
        if request.status in queue_items.REQUEST_FINAL:  # a retry or re-execution: nothing to do
            stored = prediction_store.linked_prediction(
                conn, request.model_slug, request_id=request_id
            )
            probability = stored.probability if stored else None
            return ModelOutcome(
                request.model_slug, request.prediction_id, probability, request.error
            )
        request_store.start_request(conn, request_id, run_id)
    with engine.connect() as conn:
        ctx = _context(conn, request.market_id)
    outcome = _predict_one(
        engine,
        build,
        fatal_errors,
        request.model_slug,
        ctx,
        web_search=request.web_search,
        request_id=request_id,
        run_id=run_id,
    )
    with engine.begin() as conn:
        request_store.finish_request(
            conn, request_id, prediction_id=outcome.prediction_id, error=outcome.error
        )
    return outcome


async def _research(forecaster: Forecaster, ctx: MarketContext, spend: SpendGuard) -> str | None:
    client = getattr(forecaster, "client", None)
    if client is None:
        return None
    try:
        completion = await client.complete(
            forecaster.slug,
            build_research_messages(ctx),
            web_search=True,
            response_format=None,
            max_tokens=1200,
            stats=RetryStats(),
            spend=spend,  # reserved against, and counted in, the model's daily cap
        )
        return completion.content
    finally:
        await forecaster.aclose()


def research_session(
    engine: sa.Engine, build: ForecasterFactory, session_id: str, run_id: str
) -> tuple[list[str], str | None]:
    """Start the session; when web search was asked, research the question once with the
    first web-capable (OpenRouter) model of the session. Returns (models to run, notes)."""
    with engine.begin() as conn:
        session = session_store.get_session(conn, session_id, lock=True)
        if session is None:
            raise LookupError(f"no session {session_id}")
        if session.status in queue_items.SESSION_FINAL:
            return [], session.research
        session_store.start_session(conn, session_id, run_id)
        session_store.set_session_step(conn, session_id, "research")
    notes = session.research
    if session.web_search and notes is None:
        with engine.connect() as conn:
            ctx = _context(conn, session.market_id)
            specs = [model_store.get_model(conn, m) for m in session.models]
        online = [s for s in specs if s and s.provider == model_store.OPENROUTER_PROVIDER]
        if online:
            try:
                spend = SpendGuard(
                    engine,
                    online[0].slug,
                    ctx.day,
                    online[0].max_cost_usd,
                    purpose="research",
                    run_id=run_id,
                )
                notes = asyncio.run(_research(build(online[0]), ctx, spend))
            except Exception as exc:  # research is optional: forecast without it
                notes = f"(research failed: {type(exc).__name__})"
    with engine.begin() as conn:
        session_store.set_session_step(conn, session_id, "predicting", research=notes or "")
    pending = [
        m
        for m in session.models
        if session.progress.get(m, {}).get("status") != queue_items.SUCCEEDED
    ]
    return pending, notes


def predict_session_model(
    engine: sa.Engine,
    build: ForecasterFactory,
    fatal_errors: tuple[type[BaseException], ...],
    session_id: str,
    model: str,
    run_id: str,
) -> ModelOutcome:
    """One model of a session; its progress is visible as soon as it is done."""
    with engine.begin() as conn:
        session = session_store.get_session(conn, session_id)
        session_store.set_model_progress(conn, session_id, model, status=queue_items.RUNNING)
    with engine.connect() as conn:
        ctx = _context(conn, session.market_id, research=session.research or None)
    outcome = _predict_one(
        engine,
        build,
        fatal_errors,
        model,
        ctx,
        web_search=session.web_search,
        session_id=session_id,
        run_id=run_id,
    )
    with engine.begin() as conn:
        if outcome.prediction_id is not None:
            session_store.set_model_progress(
                conn,
                session_id,
                model,
                status=queue_items.SUCCEEDED,
                prediction_id=outcome.prediction_id,
                probability=outcome.probability,
            )
        else:
            session_store.set_model_progress(
                conn,
                session_id,
                model,
                status=queue_items.FAILED,
                error=(outcome.error or "")[:500],
            )
    return outcome


def settle_session(engine: sa.Engine, session_id: str) -> str:
    """Final status and refunds for the models that failed (each refunded what it was
    charged, at most once)."""
    with engine.begin() as conn:
        return session_store.finish_session(conn, session_id)
