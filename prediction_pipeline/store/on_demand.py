"""The queue tables of on-demand work (requests and sessions), the credit ledger and
run-failure alerts. The web app inserts queued rows through `enqueue_request` and
`create_session`; everything after that belongs to the pipeline.

Credits: a debit is one conditional INSERT into the append-only ledger (only if the
balance covers it), in the same transaction as the request or session it pays for. The
user's row is locked first (PostgreSQL; SQLite write transactions are `BEGIN IMMEDIATE`,
see store.db), so concurrent debits, idempotent replays and the balance check serialise
per user. A refund gives back what its debit charged and names that debit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from types import SimpleNamespace

import sqlalchemy as sa

from prediction_pipeline.store import events
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    UTCDateTime,
    credit_ledger,
    models,
    prediction_requests,
    prediction_sessions,
    run_failure_alerts,
    session_models,
    users,
)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
COMPLETED, PARTIAL = "completed", "partial"
SESSION_FINAL = (COMPLETED, PARTIAL, FAILED)
REQUEST_FINAL = (SUCCEEDED, FAILED)
UNFINISHED = (QUEUED, RUNNING)
SESSION_DEBIT_MODEL = "*"  # the debit row's model_slug: one debit per session (UNIQUE)
MAX_GRANT = 1_000_000  # one grant; keeps sums far from the 32-bit column limit
MAX_KEY_LENGTH = 200  # idempotency keys (the column's width)
MAX_MODELS = 20  # models in one session
_PROGRESS_FIELDS = ("status", "prediction_id", "probability", "error")


class InsufficientCredits(ValueError):
    def __init__(self, required: int, balance: int) -> None:
        credits = "credit" if required == 1 else "credits"
        super().__init__(f"this costs {required} {credits}; the balance is {balance}")
        self.required, self.balance = required, balance


class UnknownModel(LookupError):
    pass


class IdempotencyConflict(ValueError):
    """The key was already used for a different request or session."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- validation (before anything is written) ------------------------------------------------


def check_credits(amount: object) -> int:
    """A credit amount: a whole number from 1 to MAX_GRANT (no floats, no bools)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError(f"credits must be a whole number, got {amount!r}")
    if not 1 <= amount <= MAX_GRANT:
        raise ValueError(f"credits must be from 1 to {MAX_GRANT}, got {amount}")
    return amount


def check_idempotency_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"an idempotency key must be a non-empty string of at most {MAX_KEY_LENGTH} "
            f"characters, got {key!r:.60}"
        )
    return key


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


def _check_models(conn: sa.Connection, slugs: Sequence[str]) -> None:
    found = set(
        conn.scalars(
            sa.select(models.c.slug).where(models.c.slug.in_(slugs), models.c.enabled.is_(True))
        )
    )
    missing = [s for s in slugs if s not in found]
    if missing:
        raise UnknownModel(f"not registered or disabled: {', '.join(missing)}")


# -- credits -------------------------------------------------------------------------------


def balance(conn: sa.Connection, user_id: int) -> int:
    return int(conn.scalar(sa.select(_balance_of(user_id))) or 0)


def _balance_of(user_id: int) -> sa.ScalarSelect:
    return (
        sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.delta), 0))
        .where(credit_ledger.c.user_id == user_id)
        .scalar_subquery()
    )


def grant_credits(
    conn: sa.Connection,
    user_id: int,
    amount: int,
    note: str | None = None,
    *,
    idempotency_key: str | None = None,
) -> int:
    """Add `amount`; returns the new balance. With an idempotency key, a repeat of the same
    key for the same user grants nothing (UNIQUE (user, key))."""
    amount = check_credits(amount)
    key = check_idempotency_key(idempotency_key)
    conn.execute(
        dialect_insert(conn, credit_ledger)
        .values(
            user_id=user_id,
            delta=amount,
            reason="grant",
            note=note,
            idempotency_key=key,
            created_at=_now(),
        )
        .on_conflict_do_nothing()
    )
    return balance(conn, user_id)


def _lock_user(conn: sa.Connection, user_id: int) -> None:
    """Serialise credit work per user: a row lock on PostgreSQL; on SQLite the write
    transaction (BEGIN IMMEDIATE) already holds the database's one write lock."""
    row = conn.execute(sa.select(users.c.id).where(users.c.id == user_id).with_for_update()).first()
    if row is None:
        raise LookupError(f"no user with id {user_id}")


def _debit(
    conn: sa.Connection,
    user_id: int,
    cost: int,
    *,
    session_id: str | None = None,
    request_id: str | None = None,
) -> int:
    """Charge `cost` in one statement that inserts the debit row only if the balance covers
    it; returns the debit's id or raises InsufficientCredits (nothing written)."""
    values = {
        "user_id": sa.literal(user_id, sa.Integer),
        "delta": sa.literal(-cost, sa.Integer),
        "reason": sa.literal("debit", sa.String),
        "session_id": sa.literal(session_id, sa.String),
        "model_slug": sa.literal(SESSION_DEBIT_MODEL if session_id else None, sa.String),
        "request_id": sa.literal(request_id, sa.String),
        "created_at": sa.literal(_now(), UTCDateTime),
    }
    covered = sa.select(*values.values()).where(_balance_of(user_id) >= cost)
    debit_id = conn.scalar(
        sa.insert(credit_ledger).from_select(list(values), covered).returning(credit_ledger.c.id)
    )
    if debit_id is None:
        raise InsufficientCredits(cost, balance(conn, user_id))
    return debit_id


def _refund(
    conn: sa.Connection,
    debit: sa.Row,
    amount: int,
    *,
    session_id: str | None = None,
    model_slug: str | None = None,
    request_id: str | None = None,
) -> bool:
    """Give back `amount` of `debit`, at most once per (session, model) or request (UNIQUE)."""
    if amount <= 0:
        return False
    insert = dialect_insert(conn, credit_ledger).on_conflict_do_nothing()
    result = conn.execute(
        insert.returning(credit_ledger.c.id),
        {
            "user_id": debit.user_id,
            "delta": amount,
            "reason": "refund",
            "session_id": session_id,
            "model_slug": model_slug,
            "request_id": request_id,
            "debit_id": debit.id,
            "created_at": _now(),
        },
    )
    return result.scalar() is not None


def _debit_row(conn: sa.Connection, *where) -> sa.Row | None:
    query = sa.select(credit_ledger).where(credit_ledger.c.reason == "debit", *where)
    return conn.execute(query).first()


# -- requests ------------------------------------------------------------------------------


def _first_with_key(
    conn: sa.Connection, table: sa.Table, user_id: int, key: str | None, **params
) -> str | None:
    """The id of the user's earlier request or session under this idempotency key, or None.
    The same key with other parameters is an IdempotencyConflict."""
    if key is None:
        return None
    first = conn.execute(
        sa.select(table).where(table.c.user_id == user_id, table.c.idempotency_key == key)
    ).first()
    if first is None:
        return None
    if any(getattr(first, name) != value for name, value in params.items()):
        kind = "request" if table is prediction_requests else "session"
        raise IdempotencyConflict(f"idempotency key {key!r} was already used for another {kind}")
    return first.id


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
    _lock_user(conn, user_id)
    first = _first_with_key(
        conn, prediction_requests, user_id, key, market_id=market_id, model_slug=model_slug,
        web_search=web_search,
    )  # fmt: skip
    if first is not None:
        return first
    _check_models(conn, [model_slug])
    request_id = str(uuid.uuid4())
    _debit(conn, user_id, credits, request_id=request_id)
    now = _now()
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


def _queued(conn: sa.Connection, table: sa.Table, limit: int) -> list[sa.Row]:
    query = (
        sa.select(table).where(table.c.status == QUEUED).order_by(table.c.created_at).limit(limit)
    )
    return list(conn.execute(query))


def _start(conn: sa.Connection, table: sa.Table, item_id: str, run_id: str) -> bool:
    """Mark a request or session running in this run (a re-launch takes it over); never
    one that is already final."""
    now = _now()
    result = conn.execute(
        sa.update(table)
        .where(table.c.id == item_id, table.c.status.in_(UNFINISHED))
        .values(status=RUNNING, run_id=run_id, started_at=now, updated_at=now)
    )
    if result.rowcount != 1:
        return False
    kind = "request" if table is prediction_requests else "session"
    events.record(conn, item_id, kind, RUNNING, run_id=run_id)
    return True


def queued_requests(conn: sa.Connection, limit: int = 100) -> list[sa.Row]:
    return _queued(conn, prediction_requests, limit)


def start_request(conn: sa.Connection, request_id: str, run_id: str) -> sa.Row:
    _start(conn, prediction_requests, request_id, run_id)
    return get_request(conn, request_id)


def finish_request(
    conn: sa.Connection, request_id: str, *, prediction_id: int | None, error: str | None
) -> bool:
    """Set the final status once (False when already final); a failed request gets back
    what it was charged."""
    now = _now()
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
    debit = _debit_row(conn, credit_ledger.c.request_id == request_id)
    if debit is None:  # requests from before credits were charged
        return False
    if not _refund(conn, debit, -debit.delta, request_id=request_id):
        return False
    conn.execute(
        sa.update(prediction_requests)
        .where(prediction_requests.c.id == request_id)
        .values(credits_refunded=prediction_requests.c.credits_refunded - debit.delta)
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
    idempotency_key: str | None = None,
) -> str:
    """Debit credits and queue the session, in the caller's one transaction. A repeat with
    the same idempotency key returns the first session's id and writes nothing."""
    slugs = check_model_slugs(model_slugs)
    key = check_idempotency_key(idempotency_key)
    _lock_user(conn, user_id)
    first = _first_with_key(
        conn, prediction_sessions, user_id, key, market_id=market_id, models=slugs,
        web_search=web_search,
    )  # fmt: skip
    if first is not None:
        return first
    _check_models(conn, slugs)
    session_id = str(uuid.uuid4())
    cost = credits_per_model * len(slugs)
    _debit(conn, user_id, cost, session_id=session_id)
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
    return _queued(conn, prediction_sessions, limit)


def start_session(conn: sa.Connection, session_id: str, run_id: str) -> SimpleNamespace:
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
    now = _now()
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
    debit = _debit_row(conn, credit_ledger.c.session_id == session_id)
    charged = conn.scalar(
        sa.select(session_models.c.credits_charged).where(
            session_models.c.session_id == session_id, session_models.c.model_slug == model_slug
        )
    )
    if debit is None or not charged:
        return False
    if not _refund(conn, debit, charged, session_id=session_id, model_slug=model_slug):
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
                .values(status=FAILED, updated_at=_now())
            )
            error = "not finished when the session settled"
            events.record(
                conn, session_id, "session", "model", model=model, status=FAILED, error=error
            )
        refund_model(conn, session_id, model)
    status = (
        COMPLETED if len(succeeded) == len(session.progress) else PARTIAL if succeeded else FAILED
    )
    now = _now()
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


# -- recovery ------------------------------------------------------------------------------


def unfinished_items(conn: sa.Connection) -> list[tuple[str, str, str, dt.datetime, int]]:
    """(kind, id, status, updated_at, launches) of requests and sessions not final yet."""
    items = []
    for kind, table in (("request", prediction_requests), ("session", prediction_sessions)):
        query = sa.select(table.c.id, table.c.status, table.c.updated_at, table.c.launches).where(
            table.c.status.in_(UNFINISHED)
        )
        for row in conn.execute(query):
            updated = (
                row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=dt.UTC)
            )
            items.append((kind, row.id, row.status, updated, row.launches))
    return items


def requeue(conn: sa.Connection, kind: str, item_id: str) -> bool:
    """Queue again after a dead run; the launch count is part of the next run key, so the
    sensor launches a new run instead of being deduplicated against the dead one. Only an
    unfinished item: one that finished since recovery looked is left alone (False)."""
    table = prediction_requests if kind == "request" else prediction_sessions
    result = conn.execute(
        sa.update(table)
        .where(table.c.id == item_id, table.c.status.in_(UNFINISHED))
        .values(status=QUEUED, launches=table.c.launches + 1, updated_at=_now())
    )
    if result.rowcount != 1:
        return False
    events.record(conn, item_id, kind, "requeued")
    return True


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
