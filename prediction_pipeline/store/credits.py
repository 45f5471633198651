"""The credit ledger: grants, debits and refunds of on-demand work.

A debit is one conditional INSERT into the append-only ledger (only if the balance covers
it), in the same transaction as the request or session it pays for. The user's row is locked
first (PostgreSQL; SQLite write transactions are `BEGIN IMMEDIATE`, see store.db), so
concurrent debits, idempotent replays and the balance check serialise per user. A refund gives
back what its debit charged and names that debit.
"""

from __future__ import annotations

import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.queue_items import check_idempotency_key, utc_now
from prediction_pipeline.store.tables import UTCDateTime, credit_ledger, users

SESSION_DEBIT_MODEL = "*"  # the debit row's model_slug: one debit per session (UNIQUE)
MAX_GRANT = 1_000_000  # one grant; keeps sums far from the 32-bit column limit


class InsufficientCredits(ValueError):
    def __init__(self, required: int, balance: int) -> None:
        credits = "credit" if required == 1 else "credits"
        super().__init__(f"this costs {required} {credits}; the balance is {balance}")
        self.required, self.balance = required, balance


def check_credits(amount: object) -> int:
    """A credit amount: a whole number from 1 to MAX_GRANT (no floats, no bools)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError(f"credits must be a whole number, got {amount!r}")
    if not 1 <= amount <= MAX_GRANT:
        raise ValueError(f"credits must be from 1 to {MAX_GRANT}, got {amount}")
    return amount


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
            created_at=utc_now(),
        )
        .on_conflict_do_nothing()
    )
    return balance(conn, user_id)


def lock_user(conn: sa.Connection, user_id: int) -> None:
    """Serialise credit work per user: a row lock on PostgreSQL; on SQLite the write
    transaction (BEGIN IMMEDIATE) already holds the database's one write lock."""
    row = conn.execute(sa.select(users.c.id).where(users.c.id == user_id).with_for_update()).first()
    if row is None:
        raise LookupError(f"no user with id {user_id}")


def debit(
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
        "created_at": sa.literal(utc_now(), UTCDateTime),
    }
    covered = sa.select(*values.values()).where(_balance_of(user_id) >= cost)
    debit_id = conn.scalar(
        sa.insert(credit_ledger).from_select(list(values), covered).returning(credit_ledger.c.id)
    )
    if debit_id is None:
        raise InsufficientCredits(cost, balance(conn, user_id))
    return debit_id


def refund(
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
            "created_at": utc_now(),
        },
    )
    return result.scalar() is not None


def debit_row(conn: sa.Connection, *where) -> sa.Row | None:
    query = sa.select(credit_ledger).where(credit_ledger.c.reason == "debit", *where)
    return conn.execute(query).first()
