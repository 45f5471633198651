"""The prediction service's promises in the scenarios that break them, on SQLite and
PostgreSQL: origins side by side, a market failing in two runs, the spend cap hit exactly,
a second run over budget, spend on another day, a fatal error partway through a batch, the
cost of answers that were never valid.

A scripted forecaster stands in for the provider: each call goes through the real spend
guard (reserve, then settle what it cost), as `OpenRouterForecaster` does.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import RetryStats
from prediction_pipeline.clients.openrouter import OpenRouterCreditsError
from prediction_pipeline.core.forecast import ForecastResult, MarketContext
from prediction_pipeline.services.forecasters import ForecastAttemptsExhausted
from prediction_pipeline.services.predict import (
    FatalForecastError,
    PredictionReport,
    PredictionTask,
    run_predictions,
)
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import spend as spend_store
from prediction_pipeline.store.tables import prediction_failures, predictions
from prediction_pipeline_tests.guard_world import (
    DAY,
    context,
    database_engine,
    new_market,
    new_model,
    unique,
)

CALL_USD = 0.001  # what each scripted call costs


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


class ScriptedForecaster:
    """Answers 0.5 for every market, or raises what `script[market_id]` says. Every call
    is paid for through the spend guard, failed ones included (what the exception's
    `cost_usd` says, as the real client settles each attempt it paid for)."""

    def __init__(
        self,
        slug: str,
        script: dict | None = None,
        cost_usd: float = CALL_USD,
        *,
        answer_after_fatal: bool = False,
    ):
        self.slug = slug
        self.script = script or {}
        self.cost_usd = cost_usd
        # Valid answers wait until a fatal error was raised: calls in flight beside it.
        self.fatal_raised = asyncio.Event() if answer_after_fatal else None
        # ("begin" | "call" | "fatal", market id), in order; "call": admitted and sent.
        self.events: list[tuple[str, int]] = []

    @property
    def calls(self) -> list[int]:
        return [market for event, market in self.events if event == "call"]

    async def forecast(
        self, ctx: MarketContext, *, web_search: bool, stats: RetryStats, spend=None
    ) -> ForecastResult:
        self.events.append(("begin", ctx.market_id))  # reserving, then sending
        ticket = await spend.reserve(web_search=web_search) if spend is not None else None
        self.events.append(("call", ctx.market_id))  # admitted: sent to the provider
        await asyncio.sleep(0)  # let the other workers run, as a real call would
        outcome = self.script.get(ctx.market_id)
        # A failure bills what its exception says it cost (all its attempts).
        billed = getattr(outcome, "cost_usd", self.cost_usd) if outcome else self.cost_usd
        if spend is not None:
            await spend.settle(ticket, billed)
        if isinstance(outcome, BaseException):
            if isinstance(outcome, OpenRouterCreditsError | FatalForecastError):
                self.events.append(("fatal", ctx.market_id))
                if self.fatal_raised is not None:
                    self.fatal_raised.set()
            raise outcome
        if self.fatal_raised is not None:
            await self.fatal_raised.wait()
        return ForecastResult(
            probability=0.5, cost_usd=self.cost_usd, prompt_tokens=10, completion_tokens=5
        )

    async def aclose(self) -> None:  # the Forecaster protocol: nothing to close
        pass


def run(engine, forecaster, market_ids, *, day=DAY, fatal_errors=(), **task) -> PredictionReport:
    task.setdefault("max_in_flight", 1)
    contexts = [context(m, day) for m in market_ids]
    job = PredictionTask(model=forecaster.slug, day=day, contexts=contexts, **task)
    return asyncio.run(run_predictions(engine, forecaster, job, fatal_errors=fatal_errors))


def markets(engine, n: int) -> list[int]:
    return [new_market(engine) for _ in range(n)]


def stored(engine, model, *where) -> list:
    with engine.connect() as conn:
        query = sa.select(predictions).where(predictions.c.model_slug == model, *where)
        return conn.execute(query).all()


def letter(engine, market, model, origin="batch") -> sa.Row | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(prediction_failures).where(
                prediction_failures.c.market_id == market,
                prediction_failures.c.model_slug == model,
                prediction_failures.c.origin == origin,
            )
        ).first()


def spent(engine, model, day=DAY) -> float:
    with engine.connect() as conn:
        return spend_store.spent_usd(conn, model, day)


def invalid(attempts: int = 2, cost_usd: float = 0.0) -> ForecastAttemptsExhausted:
    return ForecastAttemptsExhausted(
        "no valid forecast",
        attempts=attempts,
        prompt_tokens=30,
        completion_tokens=7,
        cost_usd=cost_usd,
        last_error="not JSON",
    )


# -- origins side by side ------------------------------------------------------------------


def test_batch_and_on_demand_predictions_of_one_market_model_and_day_coexist(engine):
    model = new_model(engine)
    ids = markets(engine, 2)
    first = ScriptedForecaster(model)
    assert run(engine, first, ids).predicted == 2
    # A request and a session for a market the batch already predicted are asked anyway.
    request_id, session_id = unique("r"), unique("s")
    request = ScriptedForecaster(model)
    report = run(engine, request, ids[:1], origin="request", request_id=request_id)
    assert (report.predicted, report.skipped_existing, request.calls) == (1, 0, ids[:1])
    session = ScriptedForecaster(model)
    report = run(engine, session, ids[:1], origin="session", session_id=session_id)
    assert (report.predicted, report.skipped_existing, session.calls) == (1, 0, ids[:1])
    assert sorted(r.origin for r in stored(engine, model)) == [
        "batch",
        "batch",
        "request",
        "session",
    ]
    # Each origin's "already done" is its own: nothing is asked twice.
    for origin, key in (
        ("request", {"request_id": request_id}),
        ("session", {"session_id": session_id}),
    ):
        again = ScriptedForecaster(model)
        report = run(engine, again, ids[:1], origin=origin, **key)
        assert (report.predicted, report.skipped_existing, again.calls) == (0, 1, [])
    again = ScriptedForecaster(model)
    report = run(engine, again, ids)
    assert (report.predicted, report.skipped_existing, again.calls) == (0, 2, [])


def test_an_on_demand_prediction_does_not_count_as_the_batchs(engine):
    model = new_model(engine)
    [market] = markets(engine, 1)
    run(engine, ScriptedForecaster(model), [market], origin="request", request_id=unique("r"))
    batch = ScriptedForecaster(model)
    report = run(engine, batch, [market])
    assert (report.predicted, report.skipped_existing, batch.calls) == (1, 0, [market])


def test_an_on_demand_prediction_does_not_settle_the_batchs_dead_letter(engine):
    model = new_model(engine)
    [market] = markets(engine, 1)
    run(engine, ScriptedForecaster(model, {market: invalid()}), [market])
    run(engine, ScriptedForecaster(model), [market], origin="session", session_id=unique("s"))
    assert letter(engine, market, model).resolved_at is None
    run(engine, ScriptedForecaster(model), [market])
    assert letter(engine, market, model).resolved_at is not None


def test_a_prediction_stored_meanwhile_by_another_run_is_counted_as_existing(engine):
    model = new_model(engine)
    [market] = markets(engine, 1)

    class Racing(ScriptedForecaster):
        async def forecast(self, ctx, **kwargs):
            answer = await super().forecast(ctx, **kwargs)
            with engine.begin() as conn:  # another run stores the same key first
                prediction_store.store_prediction(conn, ctx, model, answer)
            return answer

    report = run(engine, Racing(model), [market])
    assert (report.predicted, report.skipped_existing, report.failed) == (0, 1, 0)
    assert report.latencies_ms == [] and report.prompt_tokens == 0
    assert report.cost_usd == pytest.approx(CALL_USD)  # paid for all the same
    assert len(stored(engine, model)) == 1


# -- dead letters across runs ----------------------------------------------------------------


def test_a_market_failing_in_two_runs_adds_up_its_attempts_and_keeps_one_letter(engine):
    model = new_model(engine)
    bad, good = markets(engine, 2)
    for run_number in (1, 2):
        report = run(engine, ScriptedForecaster(model, {bad: invalid(attempts=2)}), [bad, good])
        assert (report.failed, report.attempted) == (1, 2 if run_number == 1 else 1)
        assert report.failures == [(f"m{bad}", "ForecastAttemptsExhausted: no valid forecast")]
    row = letter(engine, bad, model)
    assert (row.attempts, row.kind, row.error_type, row.resolved_at) == (
        4,
        "error",
        "ForecastAttemptsExhausted",
        None,
    )
    report = run(engine, ScriptedForecaster(model), [bad, good])
    assert (report.predicted, report.skipped_existing) == (1, 1)
    assert letter(engine, bad, model).resolved_at is not None


def test_the_failure_share_is_of_the_markets_attempted(engine):
    model = new_model(engine)
    ids = markets(engine, 6)
    run(engine, ScriptedForecaster(model), ids[:4])  # already stored: not attempted again
    report = run(engine, ScriptedForecaster(model, {ids[4]: invalid()}), ids)
    assert (report.selected, report.skipped_existing, report.attempted) == (6, 4, 2)
    assert report.failure_share == 0.5
    assert PredictionReport().failure_share == 0.0
    meta = report.metadata()
    assert (meta["selected"], meta["predicted"], meta["failed"]) == (6, 1, 1)
    assert meta["tokens"] == 15 + 37 and meta["skipped_existing"] == 4


# -- the spend cap -----------------------------------------------------------------------------


def test_a_cap_hit_exactly_predicts_up_to_it_and_skips_the_rest_for_budget(engine):
    model = new_model(engine)
    ids = markets(engine, 5)
    forecaster = ScriptedForecaster(model)
    report = run(engine, forecaster, ids, max_cost_usd=0.003, call_estimate_usd=CALL_USD)
    assert (report.predicted, report.skipped_budget) == (3, 2)
    assert forecaster.calls == ids[:3]
    assert spent(engine, model) == 0.003 == report.day_spent_usd
    assert report.cost_usd == pytest.approx(0.003)
    for market in ids[3:]:
        row = letter(engine, market, model)
        assert (row.kind, row.error_type, row.attempts) == ("budget", "BudgetExhausted", 0)


def test_a_second_run_over_budget_asks_nothing(engine):
    model = new_model(engine)
    ids = markets(engine, 5)
    run(engine, ScriptedForecaster(model), ids[:3], max_cost_usd=0.003, call_estimate_usd=CALL_USD)
    second = ScriptedForecaster(model)
    report = run(engine, second, ids, max_cost_usd=0.003, call_estimate_usd=CALL_USD)
    assert (report.skipped_existing, report.skipped_budget, report.predicted) == (3, 2, 0)
    assert second.calls == [] and report.cost_usd == 0
    assert report.day_spent_usd == 0.003


def test_spend_on_another_day_does_not_count_against_todays_cap(engine):
    model = new_model(engine)
    ids = markets(engine, 3)
    yesterday = DAY - dt.timedelta(days=1)
    run(engine, ScriptedForecaster(model, cost_usd=0.5), ids[:1], day=yesterday)
    report = run(
        engine, ScriptedForecaster(model), ids, max_cost_usd=0.003, call_estimate_usd=CALL_USD
    )
    assert (report.predicted, report.skipped_budget) == (3, 0)
    assert report.day_spent_usd == 0.003 and spent(engine, model, yesterday) == 0.5


def test_invalid_answers_count_toward_the_cap_and_the_report(engine):
    # Every ask of the first market is billed but invalid: its cost is spend all the same,
    # so the cap leaves room for one valid prediction only.
    model = new_model(engine)
    ids = markets(engine, 3)
    forecaster = ScriptedForecaster(model, {ids[0]: invalid(cost_usd=CALL_USD)})
    report = run(engine, forecaster, ids, max_cost_usd=0.002, call_estimate_usd=CALL_USD)
    assert (report.failed, report.predicted, report.skipped_budget) == (1, 1, 1)
    assert report.cost_usd == pytest.approx(0.002) and report.day_spent_usd == 0.002
    assert (report.prompt_tokens, report.completion_tokens) == (30 + 10, 7 + 5)


def test_exhausted_re_asks_are_in_the_runs_cost(engine):
    # The forecaster raises after paying for three invalid answers: what they cost is in
    # the day's spend and in the run's report.
    model = new_model(engine)
    [market] = markets(engine, 1)
    forecaster = ScriptedForecaster(model, {market: invalid(attempts=3, cost_usd=0.007)})
    report = run(engine, forecaster, [market])
    assert report.cost_usd == pytest.approx(0.007)
    assert report.metadata()["cost_usd"] == pytest.approx(0.007)
    assert spent(engine, model) == pytest.approx(0.007) == report.day_spent_usd
    assert (report.prompt_tokens, report.completion_tokens) == (30, 7)
    assert letter(engine, market, model).attempts == 3


# -- fatal errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_402_partway_through_a_batch_stops_it_with_no_request_after(engine, in_flight):
    model = new_model(engine)
    ids = markets(engine, 8)
    credits = OpenRouterCreditsError("402 Payment Required: no credits left")
    # With several in flight, the calls beside the 402 answer after it.
    forecaster = ScriptedForecaster(model, {ids[2]: credits}, answer_after_fatal=in_flight > 1)
    report = run(
        engine,
        forecaster,
        ids,
        max_in_flight=in_flight,
        fatal_errors=(OpenRouterCreditsError,),
    )
    assert report.fatal == "OpenRouterCreditsError: 402 Payment Required: no credits left"
    fatal_at = forecaster.events.index(("fatal", ids[2]))
    assert [e for e in forecaster.events[fatal_at + 1 :] if e[0] == "begin"] == []
    assert sorted(forecaster.calls) == ids[:3]  # the 402 was among the first three calls
    # The market that met the 402 is not dead-lettered: a re-run asks it again.
    assert letter(engine, ids[2], model) is None and report.failed == 0
    assert report.predicted == len(forecaster.calls) - 1
    rerun = ScriptedForecaster(model)
    report = run(engine, rerun, ids)
    assert ids[2] in rerun.calls and report.predicted == len(ids) - len(forecaster.calls) + 1


def test_a_fatal_forecast_error_stops_the_batch_without_being_listed_as_fatal(engine):
    model = new_model(engine)
    ids = markets(engine, 4)
    forecaster = ScriptedForecaster(model, {ids[1]: FatalForecastError("key revoked")})
    report = run(engine, forecaster, ids)
    assert report.fatal == "FatalForecastError: key revoked"
    assert forecaster.calls == ids[:2] and report.predicted == 1


def test_an_error_not_listed_as_fatal_fails_one_market_only(engine):
    model = new_model(engine)
    ids = markets(engine, 3)
    forecaster = ScriptedForecaster(model, {ids[0]: OpenRouterCreditsError("402")})
    report = run(engine, forecaster, ids)  # no fatal_errors given
    assert report.fatal is None and (report.failed, report.predicted) == (1, 2)
    assert letter(engine, ids[0], model).error_type == "OpenRouterCreditsError"
