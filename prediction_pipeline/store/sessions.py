"""Multi-model sessions: queued (and paid for), each model's progress in its own row, settled
once (what did not succeed is refunded), notified once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from types import SimpleNamespace

import sqlalchemy as sa

from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import events
from prediction_pipeline.store.queue_items import (
    COMPLETED,
    FAILED,
    PARTIAL,
    QUEUED,
    SESSION_FINAL,
    SUCCEEDED,
    UNFINISHED,
    check_enabled_models,
    check_idempotency_key,
    first_with_key,
    mark_running,
    queued_items,
    utc_now,
)
from prediction_pipeline.store.tables import credit_ledger, prediction_sessions, session_models

MAX_MODELS = 20  # models in one session
_PROGRESS_FIELDS = ("status", "prediction_id", "probability", "error")


def check_model_slugs(model_slugs: object) -> list[str]:
    """The session's models: a list of slugs, deduplicated in order. A bare string is
    refused (iterating it would make one "model" per character)."""
    if isinstance(model_slugs, str | bytes) or not isinstance(model_slugs, Sequence):
        raise ValueError(
            f"models must be a list of model slugs, got {type(model_slugs).__name__} "
            f"{model_slugs!r:.80}"
        )
    if not all(isinstance(s, str) for s in model_slugs):
        raise ValueError(f"every model must be a slug string, got {list(model_slugs)!r:.80}")
    slugs = list(dict.fromkeys(s.strip() for s in model_slugs if s.strip()))
    if not slugs:
        raise ValueError("a session needs at least one model")
    if len(slugs) > MAX_MODELS:
        raise ValueError(f"a session takes at most {MAX_MODELS} models, got {len(slugs)}")
    return slugs


def create_session(
    conn: sa.Connection,
    user_id: int,
    market_id: int,
    model_slugs: Sequence[str],
    *,
    web_search: bool = False,
    credits_per_model: int = 1,
    idempotency_key: str | None = None,
) -> str:
    """Debit credits and queue the session, in the caller's one transaction. A repeat with
    the same idempotency key returns the first session's id and writes nothing."""
    slugs = check_model_slugs(model_slugs)
    key = check_idempotency_key(idempotency_key)
    credit_store.lock_user(conn, user_id)
    first = first_with_key(
        conn, prediction_sessions, user_id, key, market_id=market_id, models=slugs,
        web_search=web_search,
    )  # fmt: skip
    if first is not None:
        return first
    check_enabled_models(conn, slugs)
    session_id = str(uuid.uuid4())
    cost = credits_per_model * len(slugs)
    credit_store.debit(conn, user_id, cost, session_id=session_id)
    now = utc_now()
    conn.execute(
        sa.insert(prediction_sessions).values(
            id=session_id,
            user_id=user_id,
            market_id=market_id,
            models=slugs,
            web_search=web_search,
            status=QUEUED,
            current_step=QUEUED,
            credits_charged=cost,
            idempotency_key=key,
            created_at=now,
            updated_at=now,
        )
    )
    conn.execute(
        sa.insert(session_models),
        [
            {
                "session_id": session_id,
                "model_slug": slug,
                "position": position,
                "status": QUEUED,
                "credits_charged": credits_per_model,
                "updated_at": now,
            }
            for position, slug in enumerate(slugs)
        ],
    )
    events.record(conn, session_id, "session", QUEUED, models=slugs, market_id=market_id)
    return session_id


def session_progress(conn: sa.Connection, session_id: str) -> dict[str, dict]:
    """model -> {status, prediction_id, probability, error} (set keys only), in order."""
    rows = conn.execute(
        sa.select(session_models)
        .where(session_models.c.session_id == session_id)
        .order_by(session_models.c.position)
    )
    return {
        row.model_slug: {
            k: getattr(row, k) for k in _PROGRESS_FIELDS if getattr(row, k) is not None
        }
        for row in rows
    }


def get_session(
    conn: sa.Connection, session_id: str, *, lock: bool = False
) -> SimpleNamespace | None:
    """The session's row with its `progress` (from session_models) as one more attribute."""
    query = sa.select(prediction_sessions).where(prediction_sessions.c.id == session_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        return None
    return SimpleNamespace(**row._mapping, progress=session_progress(conn, session_id))


def queued_sessions(conn: sa.Connection, limit: int = 100) -> list[sa.Row]:
    return queued_items(conn, prediction_sessions, limit)


def start_session(conn: sa.Connection, session_id: str, run_id: str) -> SimpleNamespace:
    mark_running(conn, prediction_sessions, session_id, run_id)
    return get_session(conn, session_id)


def set_session_step(
    conn: sa.Connection, session_id: str, step: str, *, research: str | None = None
) -> None:
    values = {"current_step": step, "updated_at": utc_now()}
    if research is not None:
        values["research"] = research
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(**values)
    )
    events.record(conn, session_id, "session", "step", step=step)


def set_model_progress(conn: sa.Connection, session_id: str, model_slug: str, **entry) -> bool:
    """Record one model's progress in its own row. The session row is locked first so a
    settle cannot run in between; a session already settled is left as it is (False)."""
    unknown = set(entry) - set(_PROGRESS_FIELDS)
    if unknown:
        raise ValueError(f"unknown progress fields: {sorted(unknown)}")
    session = conn.execute(
        sa.select(prediction_sessions.c.status)
        .where(prediction_sessions.c.id == session_id)
        .with_for_update()
    ).first()
    if session is None or session.status in SESSION_FINAL:
        return False
    now = utc_now()
    result = conn.execute(
        sa.update(session_models)
        .where(session_models.c.session_id == session_id, session_models.c.model_slug == model_slug)
        .values(**entry, updated_at=now)
    )
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(updated_at=now)
    )
    if result.rowcount == 1 and "status" in entry:
        events.record(conn, session_id, "session", "model", model=model_slug, **entry)
    return result.rowcount == 1


def refund_model(conn: sa.Connection, session_id: str, model_slug: str) -> bool:
    """Refund one failed model of a session what it was charged, at most once whatever the
    retries (UNIQUE on the ledger)."""
    debit = credit_store.debit_row(conn, credit_ledger.c.session_id == session_id)
    charged = conn.scalar(
        sa.select(session_models.c.credits_charged).where(
            session_models.c.session_id == session_id, session_models.c.model_slug == model_slug
        )
    )
    if debit is None or not charged:
        return False
    if not credit_store.refund(conn, debit, charged, session_id=session_id, model_slug=model_slug):
        return False
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(credits_refunded=prediction_sessions.c.credits_refunded + charged)
    )
    return True


def finish_session(conn: sa.Connection, session_id: str) -> str:
    """Settle a session once: refund every model that did not succeed, then set the final
    status: completed (all succeeded), partial (some) or failed (none). A session already
    settled keeps its status."""
    session = get_session(conn, session_id, lock=True)
    if session.status in SESSION_FINAL:
        return session.status
    succeeded = [m for m, e in session.progress.items() if e.get("status") == SUCCEEDED]
    for model, entry in session.progress.items():
        if model in succeeded:
            continue
        if entry.get("status") != FAILED:
            conn.execute(
                sa.update(session_models)
                .where(
                    session_models.c.session_id == session_id,
                    session_models.c.model_slug == model,
                )
                .values(status=FAILED, updated_at=utc_now())
            )
            error = "not finished when the session settled"
            events.record(
                conn, session_id, "session", "model", model=model, status=FAILED, error=error
            )
        refund_model(conn, session_id, model)
    status = (
        COMPLETED if len(succeeded) == len(session.progress) else PARTIAL if succeeded else FAILED
    )
    now = utc_now()
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(status=status, current_step="notifying", finished_at=now, updated_at=now)
    )
    refunded = conn.scalar(
        sa.select(prediction_sessions.c.credits_refunded).where(
            prediction_sessions.c.id == session_id
        )
    )
    events.record(conn, session_id, "session", "settled", status=status, credits_refunded=refunded)
    return status


def mark_notified(conn: sa.Connection, session_id: str) -> bool:
    """True the first time only: one notification per session."""
    result = conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id, prediction_sessions.c.notified_at.is_(None))
        .values(notified_at=utc_now(), current_step="done", updated_at=utc_now())
    )
    return result.rowcount == 1


def release_notification(conn: sa.Connection, session_id: str) -> None:
    """Undo `mark_notified` after a failed send, so the op's retry sends it."""
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(notified_at=None, current_step="notifying", updated_at=utc_now())
    )


def fail_session(conn: sa.Connection, session_id: str, error: str) -> str:
    """Give up on a session (refunding what did not succeed); a settled one is left alone."""
    conn.execute(
        sa.update(prediction_sessions)
        .where(
            prediction_sessions.c.id == session_id,
            prediction_sessions.c.status.in_(UNFINISHED),
        )
        .values(error=error[:2000])
    )
    return finish_session(conn, session_id)
