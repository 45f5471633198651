"""The per-(model, day) spend cap holds across processes, and every paid call counts.

Concurrency is proven with real processes (child_processes.py) on SQLite and PostgreSQL; the
provider's own bill (`FakeOpenRouterServer.total_cost`, every answer it served with a cost) is
the referee.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import RetryPolicy
from prediction_pipeline.clients.openrouter import (
    OpenRouterClient,
    OpenRouterUnavailableError,
)
from prediction_pipeline.core.forecast import MarketContext
from prediction_pipeline.resources import Forecasters
from prediction_pipeline.services import on_demand
from prediction_pipeline.services.forecasters import OpenRouterForecaster
from prediction_pipeline.services.spend import SpendCapReached, SpendGuard
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import spend as spend_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import spend_calls
from prediction_pipeline_tests.child_processes import (
    predict_slice,
    run_together,
    spend_until_refused,
)
from prediction_pipeline_tests.fakes.openrouter_server import Behaviour, FakeOpenRouterServer, Fault
from prediction_pipeline_tests.pipeline_helpers import DAY, ingest_days

MODEL = "acme/thrifty-1"
KEY = "sk-or-v1-spend-test-0123456789"
PROCESSES = 4


@pytest.fixture
def registered(engine):
    with engine.begin() as conn:
        model_store.upsert_model(conn, model_store.ModelSpec(MODEL, "openrouter"))


def day_spend(engine, day=DAY) -> spend_store.DaySpend:
    with engine.connect() as conn:
        return spend_store.day_spend(conn, MODEL, day)


def call_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(spend_calls)).all()


# -- the ledger under concurrent processes ---------------------------------------------------


def test_processes_share_one_cap_with_the_estimate_from_history(database_url, engine, registered):
    # Each call costs 1 mUSD; the estimate is the dearest call seen x 1.25 (the first call
    # probes alone). 10 calls fit in 10.5 mUSD, an 11th would not.
    args = [(database_url, MODEL, DAY.isoformat(), 0.0105, 0.001, None)] * PROCESSES
    calls = run_together(spend_until_refused, args)
    assert sum(calls) == 10
    spend = day_spend(engine)
    assert spend.spent_usd == pytest.approx(0.010, abs=1e-12) and spend.spent_usd <= 0.0105
    assert spend.reserved_usd == 0 and spend.calls == 10
    assert {r.status for r in call_rows(engine)} == {spend_store.SETTLED}


def test_a_cap_hit_exactly_stops_and_another_day_does_not_count(database_url, engine, registered):
    yesterday = DAY - dt.timedelta(days=1)
    with engine.begin() as conn:  # yesterday's spend is far over today's cap
        _, ticket = spend_store.reserve(
            conn, MODEL, yesterday, None, web_search=False, purpose="forecast"
        )
        spend_store.settle(conn, ticket, 0.5)
    args = [(database_url, MODEL, DAY.isoformat(), 0.01, 0.001, 0.001)] * PROCESSES
    calls = run_together(spend_until_refused, args)
    assert sum(calls) == 10
    assert day_spend(engine).spent_usd == 0.01  # exact: amounts are integer nano-USD
    with engine.begin() as conn:  # spend == cap: even a free call is refused
        admission, ticket = spend_store.reserve(
            conn, MODEL, DAY, 0.01, web_search=False, purpose="forecast", estimate_usd=0.0
        )
    assert admission is spend_store.Admission.EXHAUSTED and ticket is None
    assert day_spend(engine, yesterday).spent_usd == 0.5


# -- the ledger's bookkeeping (one process) --------------------------------------------------


def test_a_vanished_holder_expires_and_a_late_settle_still_counts(engine, registered):
    t0 = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
    with engine.begin() as conn:  # a probe: alone, holding the whole cap
        admission, probe = spend_store.reserve(
            conn, MODEL, DAY, 1.0, web_search=False, purpose="forecast", now=t0
        )
    assert admission is spend_store.Admission.GRANTED and probe.estimate_nusd == 10**9
    with engine.begin() as conn:  # its holder is gone: others wait, they are not refused
        admission, _ = spend_store.reserve(
            conn, MODEL, DAY, 1.0, web_search=False, purpose="forecast", now=t0
        )
    assert admission is spend_store.Admission.WAIT
    later = t0 + spend_store.RESERVATION_TTL + dt.timedelta(seconds=1)
    with engine.begin() as conn:  # past the TTL the hold is given back
        admission, ticket = spend_store.reserve(
            conn, MODEL, DAY, 1.0, web_search=False, purpose="forecast", now=later
        )
    assert admission is spend_store.Admission.GRANTED
    with engine.begin() as conn:
        spend_store.settle(conn, probe, 0.2, now=later)  # the slow holder reports after all
        spend_store.release(conn, ticket, now=later)  # never sent
    spend = day_spend(engine)
    assert spend.spent_usd == 0.2 and spend.reserved_usd == 0 and spend.calls == 1
    statuses = sorted(r.status for r in call_rows(engine))
    assert statuses == [spend_store.RELEASED, spend_store.SETTLED]


def test_no_cap_records_every_call_and_unreported_cost_counts_its_estimate(engine, registered):
    with engine.begin() as conn:
        _, first = spend_store.reserve(conn, MODEL, DAY, None, web_search=True, purpose="research")
        spend_store.settle(conn, first, 0.04)
        _, second = spend_store.reserve(conn, MODEL, DAY, None, web_search=True, purpose="research")
        assert second.estimate_nusd == 50_000_000  # the dearest web call x 1.25
        spend_store.settle(conn, second, None)  # no usage.cost reported: counted at 0.05
    assert day_spend(engine).spent_usd == pytest.approx(0.09)


# -- every paid call counts ------------------------------------------------------------------


@pytest.fixture
def server():
    with FakeOpenRouterServer(api_key=KEY, latency_mean=0.02) as server:
        yield server


def test_billed_failed_attempts_count_in_the_call_and_its_error(engine, registered, server):
    # FINISH_ERROR is an HTTP 200 whose body reports usage.cost: paid although retried.
    guard = SpendGuard(engine, MODEL, DAY, None)
    ctx_messages = [{"role": "user", "content": "Question: Will it rain?"}]

    async def call():
        policy = RetryPolicy(max_attempts=6, initial_wait=0.0, max_wait=0.0)
        async with OpenRouterClient(KEY, base_url=server.base_url, retry_policy=policy) as client:
            return await client.complete(MODEL, ctx_messages, spend=guard)

    server.enqueue(Fault.FINISH_ERROR, Fault.OK)
    completion = asyncio.run(call())
    assert completion.cost_usd == pytest.approx(server.total_cost)
    server.reset()
    server.enqueue(*[Behaviour(Fault.FINISH_ERROR)] * 10)
    with pytest.raises(OpenRouterUnavailableError) as failed:
        asyncio.run(call())
    assert failed.value.cost_usd == pytest.approx(server.total_cost) and server.total_cost > 0
    assert day_spend(engine).spent_usd == pytest.approx(completion.cost_usd + server.total_cost)


def test_an_error_status_whose_body_reports_a_cost_is_counted(engine, registered):
    # OpenRouter does not bill failed HTTP calls as a rule; when an error body does report
    # usage.cost, it was billed, and it counts.
    answers = iter(
        [
            httpx.Response(503, json={"error": {"code": 503}, "usage": {"cost": 0.003}}),
            httpx.Response(503, json={"error": {"code": 503}}),  # no usage: not billed
            httpx.Response(
                200,
                json={
                    "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"cost": 0.001},
                },
            ),
        ]
    )
    transport = httpx.MockTransport(lambda request: next(answers))
    guard = SpendGuard(engine, MODEL, DAY, 1.0)

    async def call():
        policy = RetryPolicy(max_attempts=3, initial_wait=0.0, max_wait=0.0)
        async with httpx.AsyncClient(transport=transport) as http:
            client = OpenRouterClient(KEY, retry_policy=policy, http_client=http)
            return await client.complete(MODEL, [{"role": "user", "content": "hi"}], spend=guard)

    completion = asyncio.run(call())
    assert completion.cost_usd == pytest.approx(0.004)
    assert day_spend(engine).spent_usd == pytest.approx(0.004) and day_spend(engine).calls == 1


@pytest.fixture
def world(database_url, engine):
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(database_url, instance, days=1, size=120)
    with engine.begin() as conn:
        model_store.upsert_model(conn, model_store.ModelSpec(MODEL, "openrouter"))
        rows = prediction_store.candidate_markets(conn, DAY)
    return [r.id for r in rows]


def test_concurrent_runs_stay_under_one_cap_and_count_invalid_answers(
    database_url, engine, world, server
):
    # Four processes of one model and day (three batch runs, one request) start together;
    # one market's answers are never valid (both asks billed). The provider's bill is the
    # referee: it stays under the cap, and equals the ledger and the reports' sum.
    markets = world[:30]
    with engine.connect() as conn:
        garbage = conn.scalar(sa.text(f"SELECT question FROM markets WHERE id = {markets[0]}"))
    server.on_keyword(garbage, Fault.GARBAGE, forever=True)
    cap = 0.012  # about 15 calls of this fake model
    base = {"url": database_url, "base_url": server.base_url, "key": KEY, "model": MODEL}
    base |= {"day": DAY.isoformat(), "cap": cap}
    jobs = [
        {**base, "market_ids": markets[0:10]},
        {**base, "market_ids": markets[10:20]},
        {**base, "market_ids": markets[20:29]},
        {**base, "market_ids": [markets[29]], "origin": "request", "request_id": "r-1"},
    ]
    reports = run_together(predict_slice, [(job,) for job in jobs])
    with engine.connect() as conn:
        bound = spend_store.overshoot_bound_usd(conn, MODEL, DAY)
        next_call = spend_store.call_estimate_nusd(conn, MODEL, web_search=False)
    assert server.total_cost <= cap + bound
    assert bound == 0  # no call cost more than it reserved: the cap itself held
    assert cap - server.total_cost < spend_store.to_usd(next_call)  # stopped: no room left
    assert sum(r["cost_usd"] for r in reports) == pytest.approx(server.total_cost)
    assert day_spend(engine).spent_usd == pytest.approx(server.total_cost)
    assert day_spend(engine).reserved_usd == 0
    assert sum(r["skipped_budget"] for r in reports) >= 1  # the cap was reached
    assert sum(r["predicted"] + r["failed"] + r["skipped_budget"] for r in reports) == 30
    assert server.counts["garbage"] == 2  # the invalid market was asked (and paid) twice


def test_research_cost_counts_against_the_cap(database_url, engine, world, server):
    today = dt.datetime.now(dt.UTC).date()  # on-demand work is for today
    with engine.begin() as conn:  # research with web search costs more than 0.02 alone
        model_store.upsert_model(
            conn, model_store.ModelSpec(MODEL, "openrouter", max_cost_usd=0.02)
        )
    on_demand.grant(engine, "ada@example.com", 5)
    session_id = on_demand.create_session(
        engine, world[0], [MODEL], "ada@example.com", web_search=True
    )
    forecasters = Forecasters(openrouter_api_key=KEY, openrouter_base_url=server.base_url)
    pending, notes = on_demand.research_session(engine, forecasters.build, session_id, "run-1")
    assert server.request_count == 1 and notes and "research failed" not in notes
    outcome = on_demand.predict_session_model(
        engine, forecasters.build, forecasters.fatal_errors(), session_id, MODEL, "run-1"
    )
    assert outcome.prediction_id is None and "spend cap" in outcome.error
    assert server.request_count == 1  # the forecast was refused before it was sent
    with engine.connect() as conn:
        assert spend_store.spent_usd(conn, MODEL, today) == pytest.approx(server.total_cost)
        purposes = conn.scalars(sa.select(spend_calls.c.purpose)).all()
    assert purposes == ["research"]


def test_a_refused_re_ask_keeps_the_cost_of_the_answer_before(engine, registered, server):
    # The first answer is invalid and uses up the cap: the re-ask is refused, and the error
    # still says what the first ask cost.
    ctx = MarketContext(
        market_id=1,
        source_id="m-1",
        question="Will it rain?",
        description="",
        category=None,
        end_date=None,
        day=DAY,
        market_price=0.5,
        price_history=(),
    )
    guard = SpendGuard(engine, MODEL, DAY, 1e-6)  # far below one call

    async def forecast():
        async with OpenRouterClient(KEY, base_url=server.base_url) as client:
            return await OpenRouterForecaster(client, MODEL).forecast(ctx, spend=guard)

    server.enqueue(Fault.GARBAGE)
    with pytest.raises(SpendCapReached) as refused:
        asyncio.run(forecast())
    assert server.total_cost > 0 and refused.value.cost_usd == pytest.approx(server.total_cost)
    assert server.request_count == 1
    assert day_spend(engine).spent_usd == pytest.approx(server.total_cost)


def test_the_upgrade_counts_what_stored_predictions_cost(empty_database_url):
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "0006")
    now = dt.datetime(2026, 11, 2, 8, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO models (slug, provider, created_at, updated_at) "
                "VALUES (:slug, 'openrouter', :now, :now)"
            ),
            {"slug": MODEL, "now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO markets (id, source, source_id, question, tags, outcomes, status, "
                "observed_day, first_seen_at, updated_at) VALUES (:id, 'synthetic', :sid, 'Q?', "
                "'[]', '[]', 'open', :day, :now, :now)"
            ),
            [{"id": i, "sid": f"m-{i}", "day": DAY, "now": now} for i in (1, 2, 3)],
        )
        conn.execute(
            sa.text(
                "INSERT INTO predictions (market_id, model_slug, day, origin, probability, "
                "cost_usd, created_at) VALUES (:m, :slug, :day, 'batch', 0.5, :cost, :now)"
            ),
            [
                {"m": 1, "slug": MODEL, "day": DAY, "cost": 0.25, "now": now},
                {"m": 2, "slug": MODEL, "day": DAY, "cost": 0.125, "now": now},
                {"m": 3, "slug": MODEL, "day": DAY - dt.timedelta(days=1), "cost": 1.0, "now": now},
            ],
        )
    migrate.upgrade(engine)
    assert day_spend(engine) == spend_store.DaySpend(0.375, 0.0, 2)
    assert day_spend(engine, DAY - dt.timedelta(days=1)).spent_usd == 1.0
    engine.dispose()
