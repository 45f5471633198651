"""What `run_predictions` writes and reports for each market, on SQLite and PostgreSQL: the
stored row's links (request, session, run, experiment) and latency, the dead letter of a
failed market, the in-flight cap, and the contexts a batch is built from.

(test_prediction_scenarios.py has the scenarios around the spend cap, origins and fatal
errors; this file reuses its scripted forecaster.)
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import RetryStats
from prediction_pipeline.core.forecast import ForecastResult, MarketContext
from prediction_pipeline.services import predict as predict_service
from prediction_pipeline.services.forecasters import ForecastAttemptsExhausted
from prediction_pipeline.services.predict import market_contexts
from prediction_pipeline.services.spend import SpendCapReached
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store.tables import market_snapshots, markets, spend_calls
from prediction_pipeline_tests.guard_world import DAY, database_engine, new_market, new_model
from prediction_pipeline_tests.test_prediction_scenarios import (
    ScriptedForecaster,
    letter,
    run,
    stored,
    unique,
)

END = dt.datetime(2031, 6, 30, 12, tzinfo=dt.UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


class TimedForecaster(ScriptedForecaster):
    """Reports the provider's latency for each answer, and counts the calls in flight."""

    def __init__(self, slug: str, latency_ms: float = 0.0, script: dict | None = None) -> None:
        super().__init__(slug, script)
        self.latency_ms = latency_ms
        self.in_flight = self.peak = 0

    async def forecast(self, ctx: MarketContext, **kwargs) -> ForecastResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            answer = await super().forecast(ctx, **kwargs)
            await asyncio.sleep(0)  # still in flight while the others start
        finally:
            self.in_flight -= 1
        return answer.model_copy(update={"latency_ms": self.latency_ms})


def test_an_on_demand_prediction_is_stored_with_its_links_and_the_providers_latency(engine):
    model, market = new_model(engine), new_market(engine)
    request_id = unique("req")
    report = run(
        engine,
        TimedForecaster(model, latency_ms=850.0),
        [market],
        origin="request",
        request_id=request_id,
        experiment_tag="tag-b",
        experiment_notes="why",
        run_id="run-9",
    )
    [row] = stored(engine, model)
    assert (row.origin, row.request_id, row.session_id, row.run_id) == (
        "request",
        request_id,
        None,
        "run-9",
    )
    assert (row.experiment_tag, row.experiment_notes) == ("tag-b", "why")
    assert row.latency_ms == 850.0 and report.latencies_ms == [850.0]
    with engine.connect() as conn:  # the call's spend is booked to the run too
        runs = conn.scalars(
            sa.select(spend_calls.c.run_id).where(spend_calls.c.model_slug == model)
        )
        assert list(runs) == ["run-9"]
    assert (report.predicted, report.prompt_tokens, report.completion_tokens) == (1, 10, 5)


def test_a_session_prediction_is_stored_under_its_session(engine):
    model, market = new_model(engine), new_market(engine)
    session_id = unique("s")
    run(engine, ScriptedForecaster(model), [market], origin="session", session_id=session_id)
    [row] = stored(engine, model)
    assert (row.origin, row.session_id, row.request_id) == ("session", session_id, None)


def test_without_a_reported_latency_the_measured_one_is_stored(engine):
    model, market = new_model(engine), new_market(engine)
    report = run(engine, TimedForecaster(model, latency_ms=0.0), [market])
    [row] = stored(engine, model)
    assert row.latency_ms > 0 and report.latencies_ms == [row.latency_ms]


def test_a_failed_market_is_dead_lettered_with_its_error_attempts_and_run(engine):
    model, bad, good = new_model(engine), new_market(engine), new_market(engine)
    exhausted = ForecastAttemptsExhausted(
        "no valid forecast",
        attempts=3,
        prompt_tokens=30,
        completion_tokens=7,
        cost_usd=0.004,
        last_error="not JSON",
    )
    forecaster = ScriptedForecaster(model, {bad: exhausted})
    report = run(engine, forecaster, [bad, good], origin="request", request_id=unique("r"))
    row = letter(engine, bad, model, origin="request")
    assert (row.kind, row.error_type, row.last_error, row.attempts) == (
        "error",
        "ForecastAttemptsExhausted",
        "no valid forecast",
        3,
    )
    assert row.day == DAY and row.resolved_at is None
    assert report.failures == [(f"m{bad}", "ForecastAttemptsExhausted: no valid forecast")]
    assert (report.failed, report.predicted) == (1, 1)
    assert (report.prompt_tokens, report.completion_tokens) == (30 + 10, 7 + 5)


def test_a_plain_error_counts_one_attempt_and_names_the_run(engine):
    model, bad = new_model(engine), new_market(engine)
    run(engine, ScriptedForecaster(model, {bad: RuntimeError("socket closed")}), [bad], run_id="r7")
    row = letter(engine, bad, model)
    assert (row.error_type, row.last_error, row.attempts, row.run_id) == (
        "RuntimeError",
        "socket closed",
        1,
        "r7",
    )


@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_at_most_max_in_flight_markets_are_asked_at_once(engine, max_in_flight):
    model = new_model(engine)
    ids = [new_market(engine) for _ in range(6)]
    forecaster = TimedForecaster(model)
    report = run(engine, forecaster, ids, max_in_flight=max_in_flight)
    assert report.predicted == 6
    assert forecaster.peak == max_in_flight


def test_a_run_with_nothing_to_do_asks_nothing_and_closes_the_forecaster(engine):
    model = new_model(engine)
    closed = []

    class Closing(ScriptedForecaster):
        async def aclose(self) -> None:
            closed.append(True)

    forecaster = Closing(model)
    report = run(engine, forecaster, [])
    assert (report.selected, report.predicted, forecaster.calls, closed) == (0, 0, [], [True])


def test_market_contexts_carry_the_days_price_and_its_history(engine):
    day = dt.date(2031, 2, 1)
    market, bare = new_market(engine), new_market(engine)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.update(markets)
            .where(markets.c.id == market)
            .values(description="Rain in Paris", category="weather", end_date=END)
        )
        for back, price in [(14, 0.1), (2, 0.2), (1, 0.3), (0, 0.35)]:
            conn.execute(
                sa.insert(market_snapshots).values(
                    market_id=market,
                    day=day - dt.timedelta(days=back),
                    observed_at=now,
                    yes_price=price,
                    status="open",
                )
            )
        conn.execute(
            sa.insert(market_snapshots).values(
                market_id=bare, day=day, observed_at=now, yes_price=None, status="open"
            )
        )
        rows = sorted(prediction_store.candidate_markets(conn, day), key=lambda r: r.id)
        contexts = market_contexts(conn, rows, day)
        short = market_contexts(conn, rows, day, history_days=2)
    first, second = contexts
    assert (first.market_id, first.day, first.market_price) == (market, day, 0.35)
    assert first.price_history == (0.2, 0.3, 0.35)  # 14 days: the day and 13 before it
    assert first.end_date.replace(tzinfo=dt.UTC) == END
    assert (first.description, first.category, first.question) == (
        "Rain in Paris",
        "weather",
        "Will it rain?",
    )
    assert first.source_id == rows[0].source_id
    assert (second.market_id, second.description, second.category) == (bare, "", None)
    assert (second.market_price, second.price_history) == (None, ())
    assert short[0].price_history == (0.3, 0.35)


def test_stats_are_shared_by_the_calls_of_a_run(engine):
    # The forecaster records its HTTP retries on the run's RetryStats: the report has them.
    model, market = new_model(engine), new_market(engine)

    class Retrying(ScriptedForecaster):
        async def forecast(self, ctx, *, web_search, stats: RetryStats, spend=None):
            stats.record_sleep(1.0)
            return await super().forecast(ctx, web_search=web_search, stats=stats, spend=spend)

    report = run(engine, Retrying(model), [market])
    assert report.metadata()["retries"] == 1


def test_failures_without_costs_add_nothing_but_count_each_market(engine):
    # Errors that carry no cost or tokens (a bug, a dropped socket) add none to the report;
    # every failed market counts, and what the answered ones cost is kept.
    model = new_model(engine)
    ok1, bad1, ok2, bad2 = (new_market(engine) for _ in range(4))
    script = {bad1: RuntimeError("socket closed"), bad2: KeyError("choices")}
    report = run(engine, ScriptedForecaster(model, script), [ok1, bad1, ok2, bad2])
    assert (report.predicted, report.failed) == (2, 2)
    assert report.cost_usd == pytest.approx(0.002)
    assert (report.prompt_tokens, report.completion_tokens) == (20, 10)


def test_a_call_refused_for_the_cap_after_paid_re_asks_skips_the_rest_for_budget(engine):
    # The forecaster paid for invalid answers, then its re-ask was refused for the cap: what
    # it paid is in the run's cost, and that market and every one after it are skipped.
    model = new_model(engine)
    ids = [new_market(engine) for _ in range(5)]
    refused = SpendCapReached("spend cap reached")
    refused.cost_usd = 0.004
    forecaster = ScriptedForecaster(model, {ids[1]: refused})
    report = run(engine, forecaster, ids)
    assert forecaster.calls == ids[:2]
    assert (report.predicted, report.skipped_budget, report.failed) == (1, 4, 0)
    assert report.cost_usd == pytest.approx(0.001 + 0.004)
    for market in ids[1:]:
        assert letter(engine, market, model).kind == "budget"


class SteppingClock:
    """A monotonic clock that moves only when told to (no wall-clock time in the test)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_the_measured_latency_and_elapsed_time_are_in_their_units(engine, monkeypatch):
    clock = SteppingClock()
    monkeypatch.setattr(predict_service, "time", clock)
    model, market = new_model(engine), new_market(engine)

    class Slow(ScriptedForecaster):
        async def forecast(self, ctx, **kwargs):
            clock.now += 0.25  # the provider took a quarter of a second
            return await super().forecast(ctx, **kwargs)

    report = run(engine, Slow(model), [market])
    [row] = stored(engine, model)
    assert row.latency_ms == pytest.approx(250.0)
    assert report.elapsed_s == pytest.approx(0.25)


def test_markets_another_run_stored_meanwhile_are_counted_once_each(engine):
    # Another run stores the market while this one asks the provider: the answer is not
    # stored a second time, and the market counts as existing; the run goes on.
    model = new_model(engine)
    ids = [new_market(engine) for _ in range(3)]

    class Raced(ScriptedForecaster):
        async def forecast(self, ctx, **kwargs):
            answer = await super().forecast(ctx, **kwargs)
            if ctx.market_id != ids[2]:
                with engine.begin() as conn:
                    prediction_store.store_prediction(conn, ctx, model, answer)
            return answer

    report = run(engine, Raced(model), ids)
    assert (report.skipped_existing, report.predicted) == (2, 1)
    assert len(stored(engine, model)) == 3
