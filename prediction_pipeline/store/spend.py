"""The spend ledger: every provider call reserves against its model's daily cap first.

`model_spend` holds, per (model, day), what was spent and what calls in flight hold
(`reserved`); `spend_calls` has one row per call. A call is admitted by ONE conditional
UPDATE of the counter row (`spent + reserved + estimate <= cap`), which is atomic on both
databases: SQLite serialises writers, and PostgreSQL re-checks the WHERE clause on the row
version left by a concurrent writer. So N runs of one model on one day (batch, requests,
sessions, research, in any number of processes) together stay under the cap.

Amounts are integers in nano-USD, so sums are exact and a cap hit exactly is hit exactly.

The estimate of a call is the dearest call of the same model (with or without web search)
seen so far, plus `ESTIMATE_MARGIN`; the first call of a kind, with no history, is a *probe*:
it runs alone and holds all that is left of the cap, so its cost becomes known before any
other call of the model starts. A call can still cost more than its estimate; the cap can
then be overshot by at most the sum, over calls, of (actual - estimate) - in practice by the
first call dearer than every call before it (see `overshoot_bound_usd`).

A holder that dies leaves its reservation: after `RESERVATION_TTL` it expires (the hold goes
back to the cap) the next time anyone reserves for that model and day. A late settle of an
expired call still adds its cost.

Every function runs inside the caller's transaction, writes first (so a SQLite transaction
takes the write lock before it reads).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import model_spend, spend_calls

NANO = 1_000_000_000
ESTIMATE_MARGIN = 0.25  # a call's estimate: the dearest seen x (1 + margin)
RESERVATION_TTL = dt.timedelta(minutes=20)  # > the longest call: 6 attempts x 120 s + waits

RESERVED, SETTLED, RELEASED, EXPIRED = "reserved", "settled", "released", "expired"


def to_nusd(usd: float) -> int:
    return round(usd * NANO)


def to_usd(nusd: int) -> float:
    return nusd / NANO


class Admission(enum.Enum):
    GRANTED = "granted"
    WAIT = "wait"  # calls in flight hold the headroom: ask again once they settle
    EXHAUSTED = "exhausted"  # the cap is reached (or too close for one more call)


@dataclass(frozen=True)
class Ticket:
    """A reservation held by one call in flight."""

    id: str
    model: str
    day: dt.date
    estimate_nusd: int


@dataclass(frozen=True)
class DaySpend:
    spent_usd: float
    reserved_usd: float
    calls: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key(model: str, day: dt.date):
    return sa.and_(model_spend.c.model_slug == model, model_spend.c.day == day)


def _ensure_counter(conn: sa.Connection, model: str, day: dt.date, now: dt.datetime) -> None:
    insert = dialect_insert(conn, model_spend).on_conflict_do_nothing()
    conn.execute(insert, {"model_slug": model, "day": day, "updated_at": now})


def dearest_call_nusd(conn: sa.Connection, model: str, web_search: bool) -> int | None:
    """The highest cost of a call of `model` (with or without web search), any day."""
    query = sa.select(sa.func.max(spend_calls.c.cost_nusd)).where(
        spend_calls.c.model_slug == model,
        spend_calls.c.web_search == web_search,
        spend_calls.c.cost_nusd.is_not(None),
    )
    return conn.scalar(query)


def call_estimate_nusd(
    conn: sa.Connection, model: str, web_search: bool, margin: float = ESTIMATE_MARGIN
) -> int | None:
    """What the next call is expected to cost at most; None when no call is known yet."""
    dearest = dearest_call_nusd(conn, model, web_search)
    return None if dearest is None else math.ceil(dearest * (1 + margin))


def reserve(
    conn: sa.Connection,
    model: str,
    day: dt.date,
    cap_usd: float | None,
    *,
    web_search: bool,
    purpose: str,
    run_id: str | None = None,
    estimate_usd: float | None = None,
    margin: float = ESTIMATE_MARGIN,
    ttl: dt.timedelta = RESERVATION_TTL,
    now: dt.datetime | None = None,
) -> tuple[Admission, Ticket | None]:
    """Admit one call of `model` on `day` against `cap_usd` (None: no cap, the call is only
    recorded). `estimate_usd` overrides the estimate from history."""
    now = now or _now()
    _ensure_counter(conn, model, day, now)
    expire_stale(conn, model, day, now)
    if estimate_usd is not None:
        estimate = to_nusd(estimate_usd)
    else:
        estimate = call_estimate_nusd(conn, model, web_search, margin)
    spent, reserved = model_spend.c.spent_nusd, model_spend.c.reserved_nusd
    admit, hold = _admission(cap_usd, estimate)
    granted = conn.execute(
        sa.update(model_spend)
        .where(_key(model, day), admit)
        .values(reserved_nusd=hold, updated_at=now)
        .returning(model_spend.c.spent_nusd, model_spend.c.reserved_nusd)
    ).first()
    if granted is None:
        row = conn.execute(sa.select(spent, reserved).where(_key(model, day))).one()
        too_close = estimate is not None and row.spent_nusd + estimate > to_nusd(cap_usd)
        exhausted = row.spent_nusd >= to_nusd(cap_usd) or too_close
        return (Admission.EXHAUSTED if exhausted else Admission.WAIT), None
    amount = estimate or 0
    if cap_usd is not None and estimate is None:
        amount = granted.reserved_nusd  # the probe holds what was left
    ticket = Ticket(str(uuid.uuid4()), model, day, amount)
    conn.execute(
        sa.insert(spend_calls),
        {
            "id": ticket.id,
            "model_slug": model,
            "day": day,
            "purpose": purpose,
            "web_search": web_search,
            "status": RESERVED,
            "estimate_nusd": amount,
            "run_id": run_id,
            "reserved_at": now,
            "expires_at": now + ttl,
        },
    )
    return Admission.GRANTED, ticket


def _admission(
    cap_usd: float | None, estimate: int | None
) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[int]]:
    """When the counter row admits a call (the UPDATE's condition), and what it then
    reserves: no cap admits all; a call with an estimate fits under the cap; a probe (no
    estimate yet) goes alone and holds all that is left."""
    spent, reserved = model_spend.c.spent_nusd, model_spend.c.reserved_nusd
    if cap_usd is None:
        return sa.true(), reserved + (estimate or 0)
    cap = to_nusd(cap_usd)
    if estimate is None:  # a probe: alone, holding all that is left
        return sa.and_(reserved == 0, spent < cap), cap - spent
    return sa.and_(spent + reserved < cap, spent + reserved + estimate <= cap), reserved + estimate


def _close(conn: sa.Connection, ticket: Ticket, status: str, cost: int, now: dt.datetime) -> int:
    """Close the call's row; returns the hold to give back (0 if it had already expired)."""
    values = {"status": status, "cost_nusd": cost, "settled_at": now}
    live = conn.execute(
        sa.update(spend_calls)
        .where(spend_calls.c.id == ticket.id, spend_calls.c.status == RESERVED)
        .values(**values)
    ).rowcount
    if live:
        return ticket.estimate_nusd
    conn.execute(
        sa.update(spend_calls)
        .where(spend_calls.c.id == ticket.id, spend_calls.c.status == EXPIRED)
        .values(**values)
    )
    return 0


def settle(
    conn: sa.Connection, ticket: Ticket, cost_usd: float | None, now: dt.datetime | None = None
) -> int:
    """Replace the call's reservation by what it cost (None, not reported: its estimate).
    Returns the cost in nano-USD."""
    now = now or _now()
    cost = ticket.estimate_nusd if cost_usd is None else max(0, to_nusd(cost_usd))
    held = _close(conn, ticket, SETTLED, cost, now)
    conn.execute(
        sa.update(model_spend)
        .where(_key(ticket.model, ticket.day))
        .values(
            spent_nusd=model_spend.c.spent_nusd + cost,
            reserved_nusd=model_spend.c.reserved_nusd - held,
            calls=model_spend.c.calls + 1,
            updated_at=now,
        )
    )
    return cost


def release(conn: sa.Connection, ticket: Ticket, now: dt.datetime | None = None) -> None:
    """Give the hold back: the call was never sent."""
    now = now or _now()
    held = _close(conn, ticket, RELEASED, 0, now)
    if held:
        conn.execute(
            sa.update(model_spend)
            .where(_key(ticket.model, ticket.day))
            .values(reserved_nusd=model_spend.c.reserved_nusd - held, updated_at=now)
        )


def expire_stale(conn: sa.Connection, model: str, day: dt.date, now: dt.datetime) -> int:
    """Give back the holds of calls whose holder vanished (past `expires_at`); returns how
    many. Each row flips once, whoever else expires it at the same time."""
    stale = conn.execute(
        sa.select(spend_calls.c.id, spend_calls.c.estimate_nusd)
        .where(
            spend_calls.c.model_slug == model,
            spend_calls.c.day == day,
            spend_calls.c.status == RESERVED,
            spend_calls.c.expires_at < now,
        )
        .order_by(spend_calls.c.id)  # one lock order for concurrent expirers: no deadlock
    ).all()
    given_back = expired = 0
    for row in stale:
        flipped = conn.execute(
            sa.update(spend_calls)
            .where(spend_calls.c.id == row.id, spend_calls.c.status == RESERVED)
            .values(status=EXPIRED)
        ).rowcount
        if flipped:
            expired += 1
            given_back += row.estimate_nusd
    if given_back:
        conn.execute(
            sa.update(model_spend)
            .where(_key(model, day))
            .values(reserved_nusd=model_spend.c.reserved_nusd - given_back, updated_at=now)
        )
    return expired


def day_spend(conn: sa.Connection, model: str, day: dt.date) -> DaySpend:
    row = conn.execute(
        sa.select(model_spend.c.spent_nusd, model_spend.c.reserved_nusd, model_spend.c.calls).where(
            _key(model, day)
        )
    ).first()
    if row is None:
        return DaySpend(0.0, 0.0, 0)
    return DaySpend(to_usd(row.spent_nusd), to_usd(row.reserved_nusd), row.calls)


def spent_usd(conn: sa.Connection, model: str, day: dt.date) -> float:
    """What the model has cost on `day`: every call, valid answer or not, every origin."""
    return day_spend(conn, model, day).spent_usd


def overshoot_bound_usd(conn: sa.Connection, model: str, day: dt.date) -> float:
    """How far the day's spend may exceed its cap: the sum over calls of what each cost
    beyond its reservation (0 when no call cost more than it reserved)."""
    excess = sa.func.coalesce(
        sa.func.sum(
            sa.case(
                (
                    spend_calls.c.cost_nusd > spend_calls.c.estimate_nusd,
                    spend_calls.c.cost_nusd - spend_calls.c.estimate_nusd,
                ),
                else_=0,
            )
        ),
        0,
    )
    query = sa.select(excess).where(spend_calls.c.model_slug == model, spend_calls.c.day == day)
    return to_usd(int(conn.scalar(query) or 0))
