"""The queue tables of on-demand work (requests and sessions), the credit ledger and
run-failure alerts. The web app inserts queued rows through `enqueue_request` and
`create_session`; everything after that belongs to the pipeline."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    credit_ledger,
    models,
    prediction_requests,
    prediction_sessions,
    run_failure_alerts,
    users,
)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
COMPLETED, PARTIAL = "completed", "partial"
SESSION_FINAL = (COMPLETED, PARTIAL, FAILED)
REQUEST_FINAL = (SUCCEEDED, FAILED)
SESSION_DEBIT_MODEL = "*"  # the debit row's model_slug: one debit per session (UNIQUE)


class InsufficientCredits(ValueError):
    pass


class UnknownModel(LookupError):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_models(conn: sa.Connection, slugs: Sequence[str]) -> None:
    found = set(
        conn.scalars(
            sa.select(models.c.slug).where(models.c.slug.in_(slugs), models.c.enabled.is_(True))
        )
    )
    missing = [s for s in slugs if s not in found]
    if missing:
        raise UnknownModel(f"not registered or disabled: {', '.join(missing)}")


# -- requests ------------------------------------------------------------------------------


def enqueue_request(
    conn: sa.Connection,
    market_id: int,
    model_slug: str,
    *,
    user_id: int | None = None,
    web_search: bool = False,
) -> str:
    _check_models(conn, [model_slug])
    request_id = str(uuid.uuid4())
    now = _now()
    conn.execute(
        sa.insert(prediction_requests).values(
            id=request_id,
            market_id=market_id,
            model_slug=model_slug,
            user_id=user_id,
            web_search=web_search,
            status=QUEUED,
            created_at=now,
            updated_at=now,
        )
    )
    return request_id


def get_request(conn: sa.Connection, request_id: str) -> sa.Row | None:
    return conn.execute(
        sa.select(prediction_requests).where(prediction_requests.c.id == request_id)
    ).first()


def _queued(conn: sa.Connection, table: sa.Table, limit: int) -> list[sa.Row]:
    query = (
        sa.select(table).where(table.c.status == QUEUED).order_by(table.c.created_at).limit(limit)
    )
    return list(conn.execute(query))


def _start(conn: sa.Connection, table: sa.Table, item_id: str, run_id: str) -> None:
    """Mark a request or session running in this run (a re-launch takes it over)."""
    now = _now()
    conn.execute(
        sa.update(table)
        .where(table.c.id == item_id)
        .values(status=RUNNING, run_id=run_id, started_at=now, updated_at=now)
    )


def queued_requests(conn: sa.Connection, limit: int = 100) -> list[sa.Row]:
    return _queued(conn, prediction_requests, limit)


def start_request(conn: sa.Connection, request_id: str, run_id: str) -> sa.Row:
    _start(conn, prediction_requests, request_id, run_id)
    return get_request(conn, request_id)


def finish_request(
    conn: sa.Connection, request_id: str, *, prediction_id: int | None, error: str | None
) -> None:
    now = _now()
    conn.execute(
        sa.update(prediction_requests)
        .where(prediction_requests.c.id == request_id)
        .values(
            status=SUCCEEDED if error is None else FAILED,
            prediction_id=prediction_id,
            error=error,
            finished_at=now,
            updated_at=now,
        )
    )


# -- credits -------------------------------------------------------------------------------


def balance(conn: sa.Connection, user_id: int) -> int:
    query = sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.delta), 0)).where(
        credit_ledger.c.user_id == user_id
    )
    return int(conn.scalar(query) or 0)


def grant_credits(conn: sa.Connection, user_id: int, amount: int, note: str | None = None) -> int:
    if amount <= 0:
        raise ValueError("a grant must be positive")
    conn.execute(
        sa.insert(credit_ledger).values(
            user_id=user_id, delta=amount, reason="grant", note=note, created_at=_now()
        )
    )
    return balance(conn, user_id)


def _lock_user(conn: sa.Connection, user_id: int) -> None:
    """Serialise credit checks per user (PostgreSQL row lock; SQLite has one writer)."""
    row = conn.execute(sa.select(users.c.id).where(users.c.id == user_id).with_for_update()).first()
    if row is None:
        raise LookupError(f"no user with id {user_id}")


def refund_model(conn: sa.Connection, session_id: str, model_slug: str, credits: int) -> bool:
    """Refund one failed model of a session, at most once whatever the retries (UNIQUE)."""
    session = get_session(conn, session_id)
    insert = dialect_insert(conn, credit_ledger).on_conflict_do_nothing()
    result = conn.execute(
        insert.returning(credit_ledger.c.id),
        {
            "user_id": session.user_id,
            "delta": credits,
            "reason": "refund",
            "session_id": session_id,
            "model_slug": model_slug,
            "created_at": _now(),
        },
    )
    if result.scalar() is None:
        return False
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(credits_refunded=prediction_sessions.c.credits_refunded + credits)
    )
    return True


# -- sessions ------------------------------------------------------------------------------


def create_session(
    conn: sa.Connection,
    user_id: int,
    market_id: int,
    model_slugs: Sequence[str],
    *,
    web_search: bool = False,
    credits_per_model: int = 1,
) -> str:
    """Check and debit credits and queue the session, in the caller's one transaction."""
    slugs = list(dict.fromkeys(s.strip() for s in model_slugs if s.strip()))
    if not slugs:
        raise ValueError("a session needs at least one model")
    _check_models(conn, slugs)
    _lock_user(conn, user_id)
    cost = credits_per_model * len(slugs)
    available = balance(conn, user_id)
    if available < cost:
        raise InsufficientCredits(f"the session costs {cost} credits; the balance is {available}")
    session_id = str(uuid.uuid4())
    now = _now()
    conn.execute(
        sa.insert(prediction_sessions).values(
            id=session_id,
            user_id=user_id,
            market_id=market_id,
            models=slugs,
            web_search=web_search,
            status=QUEUED,
            current_step=QUEUED,
            progress={slug: {"status": QUEUED} for slug in slugs},
            credits_charged=cost,
            created_at=now,
            updated_at=now,
        )
    )
    conn.execute(
        sa.insert(credit_ledger).values(
            user_id=user_id,
            delta=-cost,
            reason="debit",
            session_id=session_id,
            model_slug=SESSION_DEBIT_MODEL,
            created_at=now,
        )
    )
    return session_id


def get_session(conn: sa.Connection, session_id: str, *, lock: bool = False) -> sa.Row | None:
    query = sa.select(prediction_sessions).where(prediction_sessions.c.id == session_id)
    return conn.execute(query.with_for_update() if lock else query).first()


def queued_sessions(conn: sa.Connection, limit: int = 100) -> list[sa.Row]:
    return _queued(conn, prediction_sessions, limit)


def start_session(conn: sa.Connection, session_id: str, run_id: str) -> sa.Row:
    _start(conn, prediction_sessions, session_id, run_id)
    return get_session(conn, session_id)


def set_session_step(
    conn: sa.Connection, session_id: str, step: str, *, research: str | None = None
) -> None:
    values = {"current_step": step, "updated_at": _now()}
    if research is not None:
        values["research"] = research
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(**values)
    )


def set_model_progress(conn: sa.Connection, session_id: str, model_slug: str, **entry) -> dict:
    """Record one model's progress; the row lock keeps parallel model steps from losing
    each other's updates (read-modify-write of a JSON column)."""
    session = get_session(conn, session_id, lock=True)
    progress = dict(session.progress)
    progress[model_slug] = {**progress.get(model_slug, {}), **entry}
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(progress=progress, updated_at=_now())
    )
    return progress


def finish_session(conn: sa.Connection, session_id: str, credits_per_model: int = 1) -> str:
    """Settle a session: refund every model that did not succeed (once), then set the final
    status: completed (all succeeded), partial (some) or failed (none)."""
    session = get_session(conn, session_id, lock=True)
    progress = dict(session.progress)
    succeeded = [m for m in session.models if progress.get(m, {}).get("status") == SUCCEEDED]
    for model in session.models:
        if model not in succeeded:
            if progress.get(model, {}).get("status") != FAILED:
                progress[model] = {**progress.get(model, {}), "status": FAILED}
            refund_model(conn, session_id, model, credits_per_model)
    status = (
        COMPLETED if len(succeeded) == len(session.models) else PARTIAL if succeeded else FAILED
    )
    now = _now()
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(
            status=status,
            progress=progress,
            current_step="notifying",
            finished_at=now,
            updated_at=now,
        )
    )
    return status


def mark_notified(conn: sa.Connection, session_id: str) -> bool:
    """True the first time only: one notification per session."""
    result = conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id, prediction_sessions.c.notified_at.is_(None))
        .values(notified_at=_now(), current_step="done", updated_at=_now())
    )
    return result.rowcount == 1


def release_notification(conn: sa.Connection, session_id: str) -> None:
    """Undo `mark_notified` after a failed send, so the op's retry sends it."""
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(notified_at=None, current_step="notifying", updated_at=_now())
    )


def fail_session(
    conn: sa.Connection, session_id: str, error: str, credits_per_model: int = 1
) -> str:
    conn.execute(
        sa.update(prediction_sessions)
        .where(prediction_sessions.c.id == session_id)
        .values(error=error[:2000])
    )
    return finish_session(conn, session_id, credits_per_model)


# -- recovery ------------------------------------------------------------------------------


def unfinished_items(conn: sa.Connection) -> list[tuple[str, str, str, dt.datetime, int]]:
    """(kind, id, status, updated_at, launches) of requests and sessions not final yet."""
    items = []
    for kind, table in (("request", prediction_requests), ("session", prediction_sessions)):
        query = sa.select(table.c.id, table.c.status, table.c.updated_at, table.c.launches).where(
            table.c.status.in_([QUEUED, RUNNING])
        )
        for row in conn.execute(query):
            updated = (
                row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=dt.UTC)
            )
            items.append((kind, row.id, row.status, updated, row.launches))
    return items


def requeue(conn: sa.Connection, kind: str, item_id: str) -> None:
    """Queue again after a dead run; the launch count is part of the next run key, so the
    sensor launches a new run instead of being deduplicated against the dead one."""
    table = prediction_requests if kind == "request" else prediction_sessions
    conn.execute(
        sa.update(table)
        .where(table.c.id == item_id)
        .values(status=QUEUED, launches=table.c.launches + 1, updated_at=_now())
    )


# -- alerts --------------------------------------------------------------------------------


def record_alert(
    conn: sa.Connection,
    *,
    run_id: str,
    job_name: str,
    partition_key: str | None,
    error: str,
    run_url: str,
    notified_via: str,
    deliver: bool = False,
) -> int | None:
    """The new alert's id when this run's failure is recorded for the first time, else None.
    `deliver`: a webhook is to be sent (the row stays undelivered until it is); without
    one, there is nothing to deliver beyond the row and the log."""
    now = _now()
    insert = dialect_insert(conn, run_failure_alerts).on_conflict_do_nothing(
        index_elements=["run_id"]
    )
    result = conn.execute(
        insert.returning(run_failure_alerts.c.id),
        {
            "run_id": run_id,
            "job_name": job_name,
            "partition_key": partition_key,
            "error": error[:4000],
            "run_url": run_url,
            "notified_via": notified_via,
            "created_at": now,
            "delivered_at": None if deliver else now,
        },
    )
    return result.scalar()


def undelivered_alerts(conn: sa.Connection, *, max_attempts: int, limit: int = 50) -> list[sa.Row]:
    """Alerts whose webhook is still to be sent and that have attempts left, oldest first."""
    t = run_failure_alerts
    query = (
        sa.select(t)
        .where(t.c.delivered_at.is_(None), t.c.attempts < max_attempts)
        .order_by(t.c.id)
        .limit(limit)
    )
    return list(conn.execute(query))


def claim_alert_delivery(conn: sa.Connection, alert_id: int, *, seen_attempts: int) -> bool:
    """Count one delivery attempt, if nobody else did since `seen_attempts` was read: of two
    sensors that see the same undelivered alert, only one sends it."""
    t = run_failure_alerts
    result = conn.execute(
        sa.update(t)
        .where(t.c.id == alert_id, t.c.delivered_at.is_(None), t.c.attempts == seen_attempts)
        .values(attempts=t.c.attempts + 1, last_attempt_at=_now())
    )
    return result.rowcount == 1


def finish_alert_delivery(conn: sa.Connection, alert_id: int, *, error: str | None) -> None:
    """Delivered (error None), or still undelivered with the (redacted) reason."""
    t = run_failure_alerts
    values = (
        {"delivered_at": _now(), "last_error": None}
        if error is None
        else {"last_error": error[:1000]}
    )
    conn.execute(sa.update(t).where(t.c.id == alert_id).values(**values))


def alerts(conn: sa.Connection, limit: int = 50) -> list[sa.Row]:
    query = sa.select(run_failure_alerts).order_by(run_failure_alerts.c.id.desc()).limit(limit)
    return list(conn.execute(query))
