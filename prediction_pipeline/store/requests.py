"""Single on-demand prediction requests: queued (and paid for), started by a run, finished
once (a failed one is refunded)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import events
from prediction_pipeline.store.queue_items import (
    FAILED,
    QUEUED,
    SUCCEEDED,
    UNFINISHED,
    check_enabled_models,
    check_idempotency_key,
    first_with_key,
    mark_running,
    queued_items,
    utc_now,
)
from prediction_pipeline.store.tables import credit_ledger, prediction_requests


def enqueue_request(
    conn: sa.Connection,
    market_id: int,
    model_slug: str,
    *,
    user_id: int,
    web_search: bool = False,
    credits: int = 1,
    idempotency_key: str | None = None,
) -> str:
    """Debit the user and queue one prediction, in the caller's one transaction. A repeat
    with the same idempotency key returns the first request's id and writes nothing."""
    if not isinstance(model_slug, str) or not model_slug.strip():
        raise ValueError(f"model must be a model slug, got {model_slug!r:.80}")
    key = check_idempotency_key(idempotency_key)
    credit_store.lock_user(conn, user_id)
    first = first_with_key(
        conn, prediction_requests, user_id, key, market_id=market_id, model_slug=model_slug,
        web_search=web_search,
    )  # fmt: skip
    if first is not None:
        return first
    check_enabled_models(conn, [model_slug])
    request_id = str(uuid.uuid4())
    credit_store.debit(conn, user_id, credits, request_id=request_id)
    now = utc_now()
    conn.execute(
        sa.insert(prediction_requests).values(
            id=request_id,
            market_id=market_id,
            model_slug=model_slug,
            user_id=user_id,
            web_search=web_search,
            status=QUEUED,
            idempotency_key=key,
            credits_charged=credits,
            created_at=now,
            updated_at=now,
        )
    )
    events.record(conn, request_id, "request", QUEUED, model=model_slug, market_id=market_id)
    return request_id


def get_request(conn: sa.Connection, request_id: str, *, lock: bool = False) -> sa.Row | None:
    query = sa.select(prediction_requests).where(prediction_requests.c.id == request_id)
    return conn.execute(query.with_for_update() if lock else query).first()


def queued_requests(conn: sa.Connection, limit: int = 100) -> list[sa.Row]:
    return queued_items(conn, prediction_requests, limit)


def start_request(conn: sa.Connection, request_id: str, run_id: str) -> sa.Row:
    mark_running(conn, prediction_requests, request_id, run_id)
    return get_request(conn, request_id)


def finish_request(
    conn: sa.Connection, request_id: str, *, prediction_id: int | None, error: str | None
) -> bool:
    """Set the final status once (False when already final); a failed request gets back
    what it was charged."""
    now = utc_now()
    result = conn.execute(
        sa.update(prediction_requests)
        .where(prediction_requests.c.id == request_id, prediction_requests.c.status.in_(UNFINISHED))
        .values(
            status=SUCCEEDED if error is None else FAILED,
            prediction_id=prediction_id,
            error=error,
            finished_at=now,
            updated_at=now,
        )
    )
    if result.rowcount != 1:
        return False
    if error is not None:
        refund_request(conn, request_id)
    status = SUCCEEDED if error is None else FAILED
    events.record(conn, request_id, "request", status, prediction_id=prediction_id, error=error)
    return True


def refund_request(conn: sa.Connection, request_id: str) -> bool:
    debit = credit_store.debit_row(conn, credit_ledger.c.request_id == request_id)
    if debit is None:  # requests from before credits were charged
        return False
    if not credit_store.refund(conn, debit, -debit.delta, request_id=request_id):
        return False
    conn.execute(
        sa.update(prediction_requests)
        .where(prediction_requests.c.id == request_id)
        .values(credits_refunded=prediction_requests.c.credits_refunded - debit.delta)
    )
    return True
