"""One call budget per model shared across processes (store.model_limits), on SQLite and
PostgreSQL: real processes, one strict stand-in provider."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest

from prediction_pipeline.clients.http_retry import RetryPolicy
from prediction_pipeline.clients.openrouter import OpenRouterClient, OpenRouterUnavailableError
from prediction_pipeline.clients.rate_limit import ModelLimiter
from prediction_pipeline.store import model_limits
from prediction_pipeline.store.db import make_engine
from prediction_pipeline_tests.fakes.openrouter_server import FakeOpenRouterServer

MODEL = "acme/shared"
RPS = 8.0
MAX_IN_FLIGHT = 2
PROCESSES = 3
CALLS_EACH = 34  # 102 calls: the 2% allowance is 2 calls, not a fraction of one


def _calls(url: str, base_url: str, calls: int, queue) -> None:
    """One process: `calls` chat completions of MODEL, each inside the shared limiter."""

    async def main() -> list[int]:
        engine = make_engine(url)
        budget = model_limits.SharedModelBudget(engine, MODEL, RPS, MAX_IN_FLIGHT)
        limiter = ModelLimiter(RPS, MAX_IN_FLIGHT, name=MODEL, shared=budget)
        # The production client, without retries: each call is one HTTP attempt.
        client = OpenRouterClient(
            "sk-test", base_url=base_url, retry_policy=RetryPolicy(max_attempts=1), limiter=limiter
        )
        messages = [{"role": "user", "content": "Question: q?"}]

        async def one() -> int:
            try:
                await client.complete(MODEL, messages, response_format=None)
            except OpenRouterUnavailableError as exc:
                return exc.status or 0
            return 200

        # More callers than the cap: the leases, not the callers, bound what is in flight.
        statuses = await asyncio.gather(*(one() for _ in range(calls)))
        await client.aclose()
        engine.dispose()
        return list(statuses)

    queue.put(asyncio.run(main()))


@pytest.mark.serial
def test_processes_share_one_rate_and_in_flight_budget(database_url, engine):
    """Three processes call one model at once. Each alone would send at the model's full rate;
    together they stay within it: a provider allowing no burst (token bucket of 1 at exactly
    `requests_per_second`) and at most `max_in_flight` concurrent calls rejects at most 2%
    (here: at most 2 of 102 calls), and no call ever finds the in-flight cap full."""
    # Spawned, not forked from child_processes.CONTEXT's server: started from it the three
    # processes began within milliseconds of each other, and 3 of 102 calls were answered 429
    # in 2 of 3 runs (2% allowed); spawned, their imports stagger their starts. Most of those
    # early arrivals came from the lease being taken after the send slot (since moved before
    # it, clients/rate_limit.py); the fork server was not tried again.
    ctx = multiprocessing.get_context("spawn")
    with FakeOpenRouterServer(
        rate_limit=RPS, burst=1, max_in_flight=MAX_IN_FLIGHT, latency_mean=0.15
    ) as server:
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_calls, args=(database_url, server.base_url, CALLS_EACH, results))
            for _ in range(PROCESSES)
        ]
        for proc in procs:
            proc.start()
        statuses = [status for _ in procs for status in results.get(timeout=120)]
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0
        counts = dict(server.counts)
    assert len(statuses) == PROCESSES * CALLS_EACH
    assert counts.get("429_in_flight", 0) == 0, counts
    assert counts.get("429_rate", 0) <= max(1, int(0.02 * len(statuses))), counts
    assert statuses.count(200) == len(statuses) - counts.get("429_rate", 0)
    assert server.max_in_flight_seen <= MAX_IN_FLIGHT
    with engine.connect() as conn:  # every lease was given back
        assert model_limits.leases_held(conn, MODEL) == 0


def test_send_slots_are_spaced_across_connections(engine):
    """Slots reserved back to back are one spacing apart, on the database's clock, and a push
    back (a 429's cooldown) moves the next slot past it."""
    interval = model_limits.spacing(RPS)
    slots = []
    for _ in range(5):
        with engine.begin() as conn:
            slot, now, _ = model_limits.reserve_send_slot(conn, MODEL, interval)
            slots.append(slot)
            assert slot >= now
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert all(gap == pytest.approx(interval, abs=1e-6) for gap in gaps), gaps
    with engine.begin() as conn:
        model_limits.push_back(conn, MODEL, 30.0)
        slot, now, _ = model_limits.reserve_send_slot(conn, MODEL, interval)
        assert slot - now > 29.0


def test_an_idle_models_slot_is_the_lease_lead_ahead(engine):
    """The first slot of an idle model is `lead` after the database's now, so its caller has
    time to take its in-flight lease before it; a queued slot is not moved by the lead."""
    interval = model_limits.spacing(RPS)
    lead = model_limits.LEASE_LEAD_SECONDS
    with engine.begin() as conn:
        first = model_limits.reserve_send_slot(conn, MODEL, interval, lead=lead)
        second = model_limits.reserve_send_slot(conn, MODEL, interval, lead=lead)
    assert first.slot == pytest.approx(first.now + lead, abs=1e-6)
    assert second.slot == pytest.approx(first.slot + interval, abs=1e-6)
    budget = model_limits.SharedModelBudget(engine, "acme/idle", RPS, MAX_IN_FLIGHT)
    slot, now, _ = budget.reserve()
    assert budget.lease_lead == lead and slot == pytest.approx(now + lead, abs=1e-6)


def test_background_callers_queue_at_most_one_slot_ahead(engine):
    """The batch reserves only when the queue is short, so an on-demand call that arrives
    while batch workers wait for slots finds at most one of their calls ahead of it."""
    interval = model_limits.spacing(RPS)
    ahead = max(interval, model_limits.BACKGROUND_MAX_AHEAD_SECONDS)
    with engine.begin() as conn:
        first = model_limits.reserve_send_slot(conn, MODEL, interval, max_ahead=ahead)
        second = model_limits.reserve_send_slot(conn, MODEL, interval, max_ahead=ahead)
        third = model_limits.reserve_send_slot(conn, MODEL, interval, max_ahead=ahead)
        on_demand = model_limits.reserve_send_slot(conn, MODEL, interval)
    assert first.slot is not None and second.slot == pytest.approx(first.slot + interval)
    # Two slots queued (the next free one is two spacings away): the third batch call waits
    # and is told when to ask again; the on-demand call takes the next slot at once.
    assert third.slot is None
    assert third.retry_at == pytest.approx(first.slot + 2 * interval - ahead)
    assert on_demand.slot == pytest.approx(first.slot + 2 * interval)


def test_a_lease_of_a_dead_holder_lapses(engine):
    """Leases are rows with an expiry: a holder that never gives one back (its process died)
    blocks the slot only until the lease expires."""
    dead = model_limits.SharedModelBudget(engine, MODEL, RPS, 2, lease_seconds=0.5)
    alive = model_limits.SharedModelBudget(engine, MODEL, RPS, 2, lease_seconds=60)
    assert {dead.take_lease("dead"), dead.take_lease("dead")} == {0, 1}
    assert alive.take_lease("alive") is None
    with engine.connect() as conn:
        assert model_limits.leases_held(conn, MODEL) == 2
    time.sleep(0.7)
    slot = alive.take_lease("alive")
    assert slot in (0, 1)
    # The dead holder's late release does not free the slot the live one now holds.
    dead.release_lease(slot, "dead")
    with engine.connect() as conn:
        assert model_limits.leases_held(conn, MODEL) == 1
    alive.release_lease(slot, "alive")
    with engine.connect() as conn:
        assert model_limits.leases_held(conn, MODEL) == 0


def test_a_call_longer_than_a_lease_keeps_its_slot(engine):
    """A live call renews its lease: another process cannot take the slot while it runs,
    however long it takes, and can the moment it ends."""
    budget = model_limits.SharedModelBudget(engine, MODEL, 100, 1, lease_seconds=0.6)
    limiter = ModelLimiter(100, 1, name=MODEL, shared=budget)
    other = model_limits.SharedModelBudget(engine, MODEL, 100, 1, lease_seconds=0.6)
    taken_during: list[int | None] = []

    async def main() -> None:
        async with limiter:  # a call lasting three leases
            for _ in range(6):
                await asyncio.sleep(0.3)
                taken_during.append(await asyncio.to_thread(other.take_lease, "other"))

    asyncio.run(main())
    assert taken_during == [None] * 6
    assert other.take_lease("other") == 0  # released at the end of the call


def test_renewal_skips_a_lease_taken_over(engine):
    """Renewing extends only leases the holder still holds."""
    stalled = model_limits.SharedModelBudget(engine, MODEL, RPS, 1, lease_seconds=0.3)
    assert stalled.take_lease("stalled") == 0
    time.sleep(0.5)
    other = model_limits.SharedModelBudget(engine, MODEL, RPS, 1, lease_seconds=60)
    assert other.take_lease("other") == 0
    assert stalled.renew_leases([(0, "stalled")]) == 0
    assert other.renew_leases([(0, "other")]) == 1
    assert stalled.take_lease("stalled") is None


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_spacing_needs_a_positive_rate(bad):
    with pytest.raises(ValueError):
        ModelLimiter(bad, 1, shared=None)
