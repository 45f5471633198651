"""One call budget per model, shared by every run and process through the app database.

A model's provider limits (`requests_per_second`, `max_in_flight` in the registry) hold for
the model as a whole: the daily batch, a request and a session's step calling one model at
once must stay within them together. Each process keeps its own `ModelLimiter`
(clients/rate_limit.py); this module is what they share:

- the send rate: one row per model in `model_rate_slots` holds the earliest time the next
  call may be sent. A call reserves its slot with one atomic upsert,
  ``next_slot = max(next_slot, now + lead) + interval ... RETURNING``, and sleeps until it:
  calls leave at least `interval` apart whichever process sends them, and nobody waits for a lock
  while sleeping. A 429 pushes `next_slot` past the cooldown, so every process backs off.
- the in-flight cap: `model_call_leases` holds one row per call in flight, in one of
  `max_in_flight` numbered slots, taken by a conditional upsert (insert, or take over a lease
  whose `expires_at` has passed) shortly before the call's slot (`LEASE_LEAD_SECONDS`) and
  deleted after the call. Leases are short (`LEASE_SECONDS`) and renewed by their holder
  while the call lasts (`renew_leases`, every `LEASE_SECONDS / 3`), so a call may take as
  long as its HTTP timeout allows, while a process killed holding a lease (SIGKILL, OOM, a
  lost host) blocks its slot for at most `LEASE_SECONDS`, never for good.

Times are epoch seconds on the *database's* clock (`now` is read in the same statement), so
hosts whose clocks disagree still space their calls correctly; only the sleep happens locally.

The spacing carries a small safety margin (`SPACING_MARGIN`): a provider that allows no
burst rejects a call that arrives even a few milliseconds early, and two calls sent exactly
`1/rps` apart arrive closer than that whenever the first one is delayed a little on its way
(scheduling, connection set-up). benchmarks/prediction_throughput.py measures its cost.
"""

from __future__ import annotations

import math
import random
import uuid
from typing import NamedTuple

import sqlalchemy as sa

# Calls leave (1 + SPACING_FRACTION) / rps + SPACING_SECONDS apart. Measured against a no-burst
# stand-in at the provider's exact limit (prediction_pipeline_tests/test_shared_limits.py,
# benchmarks/on_demand_latency.py): the fixed part absorbs the jitter of a loaded host.
# 3% + 2 ms let 2 of 30 calls from three processes arrive early on SQLite in a quiet CI run;
# 4% + 4 ms gave 0 rate 429s in 307 calls with a batch and requests side by side.
SPACING_FRACTION = 0.04
SPACING_SECONDS = 0.004

# An in-flight lease lasts this long unless its holder renews it (every third of it). A
# killed process's leases free up within it: a restarted run waits that long at most.
LEASE_SECONDS = 15.0

# A slot is at least this far ahead when reserved: the caller takes its in-flight lease (a
# database write, slower on a loaded host) before the slot instead of after it, so that it
# leaves on time even when the model was idle. The cost: an idle model's call waits 20 ms.
LEASE_LEAD_SECONDS = 0.02

# Background work (the daily batch) reserves a send slot only when the model's next free slot
# is at most max(one spacing, this) away, so an on-demand call, which reserves at once, finds
# at most about one batch call queued ahead of it instead of one per batch worker. The floor
# keeps fast models' batches from losing slots to a late wake-up.
BACKGROUND_MAX_AHEAD_SECONDS = 0.25


def _now_sql(dialect: str) -> str:
    """Epoch seconds (float) on the database's clock, stable within one statement."""
    if dialect == "postgresql":
        return "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)"
    if dialect == "sqlite":
        return "((julianday('now') - 2440587.5) * 86400.0)"
    raise NotImplementedError(f"unsupported database dialect: {dialect}")


def _greatest(dialect: str) -> str:
    return "GREATEST" if dialect == "postgresql" else "max"  # SQLite's 2-argument max()


def spacing(requests_per_second: float) -> float:
    """Seconds between two sends of one model, safety margin included. A registry row with
    a rate that is not positive is a configuration error (ValueError, not retried)."""
    if not (math.isfinite(requests_per_second) and requests_per_second > 0):
        raise ValueError("requests_per_second must be a positive number")
    return (1.0 + SPACING_FRACTION) / requests_per_second + SPACING_SECONDS


class Reservation(NamedTuple):
    """Epoch seconds on the database's clock: `slot`, when the caller sends, or None when a
    background caller found the queue too long and reserved nothing (it asks again at
    `retry_at`); `now`, the database's clock when the reservation was made."""

    slot: float | None
    now: float
    retry_at: float | None = None


def reserve_send_slot(
    conn: sa.Connection,
    model: str,
    interval: float,
    *,
    max_ahead: float | None = None,
    lead: float = 0.0,
) -> Reservation:
    """Reserve the next send slot of `model`; the caller sends at `slot` (`lead` seconds from
    now when the model is idle). With `max_ahead` (background work), reserve only when the
    next free slot is at most `max_ahead` seconds away, else reserve nothing and retry near
    `next_free - max_ahead`: the batch then never queues more than about one call ahead of an
    on-demand call."""
    dialect = conn.dialect.name
    now = _now_sql(dialect)
    only_if_near = (
        "" if max_ahead is None else f" WHERE model_rate_slots.next_slot <= {now} + :ahead"
    )
    row = conn.execute(
        sa.text(
            "INSERT INTO model_rate_slots (model_slug, next_slot) "
            f"VALUES (:model, {now} + :lead + :i) "
            "ON CONFLICT (model_slug) DO UPDATE SET next_slot = "
            f"{_greatest(dialect)}(model_rate_slots.next_slot, {now} + :lead) + :i{only_if_near} "
            f"RETURNING next_slot, {now} AS now"
        ),
        {"model": model, "i": interval, "ahead": max_ahead, "lead": lead},
    ).first()
    if row is not None:
        return Reservation(row.next_slot - interval, row.now)
    row = conn.execute(
        sa.text(f"SELECT next_slot, {now} AS now FROM model_rate_slots WHERE model_slug = :model"),
        {"model": model},
    ).one()
    return Reservation(None, row.now, retry_at=row.next_slot - max_ahead)


def push_back(conn: sa.Connection, model: str, seconds: float) -> None:
    """No call of `model` leaves before `seconds` from now (a 429's cooldown)."""
    dialect = conn.dialect.name
    now = _now_sql(dialect)
    conn.execute(
        sa.text(
            f"INSERT INTO model_rate_slots (model_slug, next_slot) VALUES (:model, {now} + :s) "
            "ON CONFLICT (model_slug) DO UPDATE SET next_slot = "
            f"{_greatest(dialect)}(model_rate_slots.next_slot, {now} + :s)"
        ),
        {"model": model, "s": seconds},
    )


def take_lease(
    conn: sa.Connection, model: str, slot: int, holder: str, lease_seconds: float
) -> bool:
    """Take in-flight slot `slot` of `model` for `holder` if it is free (never taken,
    released, or its lease expired). One slot per transaction: trying several in one
    transaction would lock rows in different orders in different processes (deadlocks)."""
    now = _now_sql(conn.dialect.name)
    statement = sa.text(
        "INSERT INTO model_call_leases (model_slug, slot, holder, expires_at) "
        f"VALUES (:model, :slot, :holder, {now} + :ttl) "
        "ON CONFLICT (model_slug, slot) DO UPDATE SET holder = excluded.holder, "
        f"expires_at = excluded.expires_at WHERE model_call_leases.expires_at < {now} "
        "RETURNING slot"
    )
    params = {"model": model, "slot": slot, "holder": holder, "ttl": lease_seconds}
    return conn.execute(statement, params).first() is not None


def release_lease(conn: sa.Connection, model: str, slot: int, holder: str) -> None:
    """Give back a slot (only if `holder` still holds it: an expired lease may be another's)."""
    conn.execute(
        sa.text(
            "DELETE FROM model_call_leases "
            "WHERE model_slug = :model AND slot = :slot AND holder = :holder"
        ),
        {"model": model, "slot": slot, "holder": holder},
    )


def renew_leases(
    conn: sa.Connection, model: str, leases: list[tuple[int, str]], lease_seconds: float
) -> int:
    """Extend the leases `(slot, holder)` still held by their holders; returns how many were
    (one lapsed and taken over by someone else is not extended)."""
    if not leases:
        return 0
    now = _now_sql(conn.dialect.name)
    statement = sa.text(
        f"UPDATE model_call_leases SET expires_at = {now} + :ttl "
        "WHERE model_slug = :model AND holder IN :holders"  # a holder is one call's uuid
    ).bindparams(sa.bindparam("holders", expanding=True))
    params = {"model": model, "holders": [h for _, h in leases], "ttl": lease_seconds}
    return conn.execute(statement, params).rowcount


def leases_held(conn: sa.Connection, model: str) -> int:
    """Unexpired in-flight leases of `model` (for tests and operators)."""
    now = _now_sql(conn.dialect.name)
    return conn.execute(
        sa.text(
            f"SELECT count(*) FROM model_call_leases WHERE model_slug = :model "
            f"AND expires_at >= {now}"
        ),
        {"model": model},
    ).scalar_one()


class SharedModelBudget:
    """The database side of one model's `ModelLimiter`: blocking calls, run in a thread by
    the limiter. Each call is its own short transaction (the write lock is never held while
    anyone sleeps)."""

    def __init__(
        self,
        engine: sa.Engine,
        model: str,
        requests_per_second: float,
        max_in_flight: int,
        *,
        lease_seconds: float = LEASE_SECONDS,
        background: bool = False,
    ) -> None:
        self.engine = engine
        self.model = model
        self.interval = spacing(requests_per_second)
        self.max_ahead = max(self.interval, BACKGROUND_MAX_AHEAD_SECONDS) if background else None
        self.max_in_flight = int(max_in_flight)
        self.lease_seconds = float(lease_seconds)
        self.renew_every = self.lease_seconds / 3
        self.lease_lead = LEASE_LEAD_SECONDS

    def __repr__(self) -> str:  # the engine's URL may hold a password: leave it out
        return f"SharedModelBudget({self.model!r}, interval={self.interval:.3f}s)"

    @staticmethod
    def new_holder() -> str:
        return uuid.uuid4().hex

    def take_lease(self, holder: str) -> int | None:
        """A free in-flight slot of the model for `holder`, or None when all are held."""
        first = random.randrange(self.max_in_flight)  # spread the takers over the slots
        for offset in range(self.max_in_flight):
            slot = (first + offset) % self.max_in_flight
            with self.engine.begin() as conn:
                if take_lease(conn, self.model, slot, holder, self.lease_seconds):
                    return slot
        return None

    def release_lease(self, slot: int, holder: str) -> None:
        with self.engine.begin() as conn:
            release_lease(conn, self.model, slot, holder)

    def renew_leases(self, leases: list[tuple[int, str]]) -> int:
        with self.engine.begin() as conn:
            return renew_leases(conn, self.model, leases, self.lease_seconds)

    def reserve(self) -> Reservation:
        with self.engine.begin() as conn:
            return reserve_send_slot(
                conn, self.model, self.interval, max_ahead=self.max_ahead, lead=self.lease_lead
            )

    def push_back(self, seconds: float) -> None:
        with self.engine.begin() as conn:
            push_back(conn, self.model, seconds)
