"""Service functions for predictions and their dead letters (idempotent writes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from prediction_pipeline.core.batching import SQL_BATCH, batched
from prediction_pipeline.core.forecast import ForecastResult, MarketContext
from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    market_snapshots,
    markets,
    prediction_failures,
    predictions,
)

BATCH = "batch"


def candidate_markets(conn: sa.Connection, day: dt.date) -> list[sa.Row]:
    """Markets with an open snapshot on `day`: id, question, ..., price and volume that day."""
    query = (
        sa.select(
            markets.c.id,
            markets.c.source_id,
            markets.c.question,
            markets.c.description,
            markets.c.category,
            markets.c.end_date,
            market_snapshots.c.yes_price,
            market_snapshots.c.volume,
        )
        .join(market_snapshots, market_snapshots.c.market_id == markets.c.id)
        .where(market_snapshots.c.day == day, market_snapshots.c.status == MarketStatus.OPEN.value)
    )
    return list(conn.execute(query))


def price_history(
    conn: sa.Connection, market_ids: Sequence[int], day: dt.date, days: int = 14
) -> dict[int, list[float]]:
    """Daily YES prices (oldest first) for up to `days` days ending at `day`."""
    history: dict[int, list[float]] = {mid: [] for mid in market_ids}
    start = day - dt.timedelta(days=days - 1)
    for chunk in batched(market_ids, SQL_BATCH):
        query = (
            sa.select(market_snapshots.c.market_id, market_snapshots.c.yes_price)
            .where(
                market_snapshots.c.market_id.in_(chunk),
                market_snapshots.c.day.between(start, day),
                market_snapshots.c.yes_price.is_not(None),
            )
            .order_by(market_snapshots.c.market_id, market_snapshots.c.day)
        )
        for market_id, price in conn.execute(query):
            history[market_id].append(price)
    return history


def predicted_market_ids(conn: sa.Connection, model: str, day: dt.date) -> set[int]:
    query = sa.select(predictions.c.market_id).where(
        predictions.c.model_slug == model, predictions.c.day == day, predictions.c.origin == BATCH
    )
    return set(conn.scalars(query))


def linked_prediction(
    conn: sa.Connection,
    model: str,
    *,
    request_id: str | None = None,
    session_id: str | None = None,
) -> sa.Row | None:
    """The prediction already stored for an on-demand request, or a session's model."""
    if request_id is not None:
        where = predictions.c.request_id == request_id
    elif session_id is not None:
        where = sa.and_(predictions.c.session_id == session_id, predictions.c.model_slug == model)
    else:
        raise ValueError("request_id or session_id is required")
    return conn.execute(sa.select(predictions).where(where)).first()


def market_context_row(conn: sa.Connection, market_id: int, day: dt.date) -> sa.Row | None:
    """A market with its latest snapshot on or before `day` (on-demand work may run before
    the day's markets have landed)."""
    latest = (
        sa.select(market_snapshots.c.yes_price)
        .where(market_snapshots.c.market_id == market_id, market_snapshots.c.day <= day)
        .order_by(market_snapshots.c.day.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = sa.select(
        markets.c.id,
        markets.c.source_id,
        markets.c.question,
        markets.c.description,
        markets.c.category,
        markets.c.end_date,
        markets.c.status,
        latest.label("yes_price"),
    ).where(markets.c.id == market_id)
    return conn.execute(query).first()


def store_prediction(
    conn: sa.Connection,
    ctx: MarketContext,
    model: str,
    result: ForecastResult,
    *,
    origin: str = BATCH,
    request_id: str | None = None,
    session_id: str | None = None,
    experiment_tag: str | None = None,
    experiment_notes: str | None = None,
    run_id: str | None = None,
) -> int | None:
    """Insert one prediction; returns its id, or None when it already existed (idempotent).
    A stored prediction settles any dead letter of the same (market, model, day, origin)."""
    now = dt.datetime.now(dt.UTC)
    row = {
        "market_id": ctx.market_id,
        "model_slug": model,
        "day": ctx.day,
        "origin": origin,
        "request_id": request_id,
        "session_id": session_id,
        "probability": result.probability,
        "confidence": result.confidence,
        "rationale": result.rationale,
        "market_price": ctx.market_price,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": result.cost_usd,
        "latency_ms": result.latency_ms,
        "web_search_used": result.web_search_used,
        "attempts": result.attempts,
        "experiment_tag": experiment_tag,
        "experiment_notes": experiment_notes,
        "run_id": run_id,
        "created_at": now,
    }
    insert = dialect_insert(conn, predictions).on_conflict_do_nothing()
    new_id = conn.execute(insert.returning(predictions.c.id), row).scalar()
    conn.execute(
        sa.update(prediction_failures)
        .where(
            prediction_failures.c.market_id == ctx.market_id,
            prediction_failures.c.model_slug == model,
            prediction_failures.c.day == ctx.day,
            prediction_failures.c.origin == origin,
            prediction_failures.c.resolved_at.is_(None),
        )
        .values(resolved_at=now)
    )
    return new_id


def record_failure(
    conn: sa.Connection,
    market_id: int,
    model: str,
    day: dt.date,
    *,
    kind: str,
    error_type: str,
    error: str,
    attempts: int,
    origin: str = BATCH,
    run_id: str | None = None,
) -> None:
    """Upsert the dead letter for (market, model, day, origin): attempts accumulate across
    runs, the last error wins, and a settled letter is reopened."""
    now = dt.datetime.now(dt.UTC)
    insert = dialect_insert(conn, prediction_failures)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["market_id", "model_slug", "day", "origin"],
            set_={
                "kind": insert.excluded.kind,
                "error_type": insert.excluded.error_type,
                "last_error": insert.excluded.last_error,
                "attempts": prediction_failures.c.attempts + insert.excluded.attempts,
                "last_failed_at": insert.excluded.last_failed_at,
                "resolved_at": None,
                "run_id": insert.excluded.run_id,
            },
        ),
        {
            "market_id": market_id,
            "model_slug": model,
            "day": day,
            "origin": origin,
            "kind": kind,
            "error_type": error_type,
            "last_error": error[:2000],
            "attempts": attempts,
            "first_failed_at": now,
            "last_failed_at": now,
            "run_id": run_id,
        },
    )


def open_failures(
    conn: sa.Connection, model: str | None = None, day: dt.date | None = None, limit: int = 100
) -> list[sa.Row]:
    query = (
        sa.select(prediction_failures, markets.c.source_id)
        .join(markets, markets.c.id == prediction_failures.c.market_id)
        .where(prediction_failures.c.resolved_at.is_(None))
        .order_by(prediction_failures.c.last_failed_at.desc())
        .limit(limit)
    )
    if model:
        query = query.where(prediction_failures.c.model_slug == model)
    if day:
        query = query.where(prediction_failures.c.day == day)
    return list(conn.execute(query))


# -- data-quality queries behind the asset checks -------------------------------------------


def batch_duplicates(conn: sa.Connection, model: str, day: dt.date) -> int:
    dupes = (
        sa.select(predictions.c.market_id)
        .where(
            predictions.c.model_slug == model,
            predictions.c.day == day,
            predictions.c.origin == BATCH,
        )
        .group_by(predictions.c.market_id)
        .having(sa.func.count() > 1)
        .subquery()
    )
    return conn.scalar(sa.select(sa.func.count()).select_from(dupes)) or 0


def probabilities_out_of_range(conn: sa.Connection, model: str, day: dt.date) -> int:
    p = predictions.c.probability
    query = sa.select(sa.func.count()).where(
        predictions.c.model_slug == model,
        predictions.c.day == day,
        sa.or_(p < 0, p > 1, p.is_(None)),
    )
    return conn.scalar(query) or 0


def recent_predictions(
    conn: sa.Connection, model: str | None = None, day: dt.date | None = None, limit: int = 20
) -> list[sa.Row]:
    query = (
        sa.select(predictions, markets.c.source_id, markets.c.question)
        .join(markets, markets.c.id == predictions.c.market_id)
        .order_by(predictions.c.id.desc())
        .limit(limit)
    )
    if model:
        query = query.where(predictions.c.model_slug == model)
    if day:
        query = query.where(predictions.c.day == day)
    return list(conn.execute(query))
