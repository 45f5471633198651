"""store/predictions.py's reads and writes, on SQLite and PostgreSQL: which markets a day's
batch predicts and with what context, what a stored prediction holds, and the queries
behind the dead-letter list, the asset checks and `predictions recent`.

(The idempotency and dead-letter guards themselves are in test_store_guards.py.)
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from prediction_pipeline.core.forecast import ForecastResult, MarketContext
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store.tables import (
    market_snapshots,
    markets,
    prediction_failures,
    predictions,
)
from prediction_pipeline_tests.guard_world import (
    DAY,
    context,
    database_engine,
    new_market,
    new_model,
    result,
    unique,
)

YESTERDAY = DAY - dt.timedelta(days=1)
TOMORROW = DAY + dt.timedelta(days=1)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


def snapshot(engine, market: int, day: dt.date, price: float | None, status: str = "open"):
    with engine.begin() as conn:
        conn.execute(
            sa.insert(market_snapshots).values(
                market_id=market,
                day=day,
                observed_at=dt.datetime.now(dt.UTC),
                yes_price=price,
                volume=1000.0 * (price or 0),
                status=status,
            )
        )


def store(engine, market: int, model: str, day: dt.date = DAY, **kwargs) -> int | None:
    probability = kwargs.pop("probability", 0.5)
    with engine.begin() as conn:
        return prediction_store.store_prediction(
            conn, context(market, day), model, result(probability), **kwargs
        )


def fail(engine, market: int, model: str, day: dt.date = DAY, error: str = "boom", **kwargs):
    with engine.begin() as conn:
        prediction_store.record_failure(
            conn,
            market,
            model,
            day,
            kind="error",
            error_type="ValueError",
            error=error,
            attempts=kwargs.pop("attempts", 1),
            **kwargs,
        )


# -- what a day's batch predicts -----------------------------------------------------------


def test_candidates_are_the_markets_open_on_the_day_with_that_days_price(engine):
    # The snapshot table is shared by the module's tests: use a day of this test's own.
    day = dt.date(2031, 1, 1)
    open_today, closed_today, open_yesterday_only = (new_market(engine) for _ in range(3))
    snapshot(engine, open_today, day - dt.timedelta(days=1), 0.2)
    snapshot(engine, open_today, day, 0.3)
    snapshot(engine, closed_today, day, 0.9, status="closed")
    snapshot(engine, open_yesterday_only, day - dt.timedelta(days=1), 0.5)
    with engine.connect() as conn:
        rows = prediction_store.candidate_markets(conn, day)
    assert [(r.id, r.yes_price, r.volume) for r in rows] == [(open_today, 0.3, 300.0)]
    assert rows[0].question == "Will it rain?" and rows[0].source_id.startswith("m-")


def test_price_history_is_the_last_days_prices_oldest_first(engine):
    market, quiet, not_asked = new_market(engine), new_market(engine), new_market(engine)
    # Written out of order: the history is ordered by day, not by insertion.
    for back, price in [(0, 0.4), (20, 0.1), (14, 0.15), (3, 0.2), (2, None), (1, 0.3)]:
        snapshot(engine, market, DAY - dt.timedelta(days=back), price)
    snapshot(engine, market, TOMORROW, 0.9)  # after the day: not known yet
    snapshot(engine, not_asked, DAY, 0.5)
    with engine.connect() as conn:
        history = prediction_store.price_history(conn, [market, quiet], DAY)
        three_days = prediction_store.price_history(conn, [market], DAY, days=3)
    # 14 days by default: the day and the 13 before it (DAY - 14 is out).
    assert history == {market: [0.2, 0.3, 0.4], quiet: []}
    assert three_days == {market: [0.3, 0.4]}  # the day and the two before it


def test_a_market_context_has_the_latest_price_on_or_before_the_day(engine):
    market, other = new_market(engine), new_market(engine)
    end = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.update(markets)
            .where(markets.c.id == market)
            .values(description="Paris", category="weather", end_date=end)
        )
    snapshot(engine, market, DAY - dt.timedelta(days=3), 0.2)
    snapshot(engine, market, YESTERDAY, 0.3)
    snapshot(engine, market, DAY, 0.35)
    snapshot(engine, market, TOMORROW, 0.9)
    snapshot(engine, other, DAY - dt.timedelta(days=12), 0.7)  # another market's price
    with engine.connect() as conn:
        row = prediction_store.market_context_row(conn, market, DAY)
        before = prediction_store.market_context_row(conn, market, YESTERDAY)
        early = prediction_store.market_context_row(conn, market, DAY - dt.timedelta(days=10))
        missing = prediction_store.market_context_row(conn, -1, DAY)
    assert (row.id, row.yes_price, row.status, row.question) == (
        market,
        0.35,
        "open",
        "Will it rain?",
    )
    assert (row.description, row.category) == ("Paris", "weather")
    assert row.end_date.replace(tzinfo=dt.UTC) == end and row.source_id.startswith("m-")
    assert before.yes_price == 0.3
    assert early.id == market and early.yes_price is None  # no snapshot of its own yet
    assert missing is None


# -- what is stored ------------------------------------------------------------------------


def test_a_stored_prediction_holds_the_forecast_its_cost_and_where_it_came_from(engine):
    model, market = new_model(engine), new_market(engine)
    ctx = MarketContext(market_id=market, source_id="m", question="?", day=DAY, market_price=0.42)
    forecast = ForecastResult(
        probability=0.7,
        confidence=0.6,
        rationale="because",
        prompt_tokens=120,
        completion_tokens=30,
        cost_usd=0.0025,
        latency_ms=850.0,
        web_search_used=True,
        attempts=2,
    )
    request_id = unique("req")
    with engine.begin() as conn:
        new_id = prediction_store.store_prediction(
            conn,
            ctx,
            model,
            forecast,
            origin="request",
            request_id=request_id,
            experiment_tag="tag-a",
            experiment_notes="notes",
            run_id="run-1",
        )
    with engine.connect() as conn:
        row = conn.execute(sa.select(predictions).where(predictions.c.id == new_id)).one()
        linked = prediction_store.linked_prediction(conn, model, request_id=request_id)
    assert linked.id == new_id
    assert dict(row._mapping) | {"id": None, "created_at": None} == {
        "id": None,
        "market_id": market,
        "model_slug": model,
        "day": DAY,
        "origin": "request",
        "request_id": request_id,
        "session_id": None,
        "probability": 0.7,
        "confidence": 0.6,
        "rationale": "because",
        "market_price": 0.42,
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "cost_usd": 0.0025,
        "latency_ms": 850.0,
        "web_search_used": True,
        "attempts": 2,
        "experiment_tag": "tag-a",
        "experiment_notes": "notes",
        "run_id": "run-1",
        "created_at": None,
    }
    # (SQLite hands back naive UTC, PostgreSQL aware: compare as naive UTC.)
    age = dt.datetime.now(dt.UTC).replace(tzinfo=None) - row.created_at.replace(tzinfo=None)
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=5)


def test_a_sessions_prediction_is_found_by_session_and_model(engine):
    model, other_model, market = new_model(engine), new_model(engine), new_market(engine)
    session = unique("session")
    new_id = store(engine, market, model, origin="session", session_id=session)
    with engine.connect() as conn:
        found = prediction_store.linked_prediction(conn, model, session_id=session)
        other = prediction_store.linked_prediction(conn, other_model, session_id=session)
        elsewhere = prediction_store.linked_prediction(conn, model, session_id=unique("s"))
        with pytest.raises(ValueError) as refused:
            prediction_store.linked_prediction(conn, model)
    assert str(refused.value) == "request_id or session_id is required"
    assert found.id == new_id and other is None and elsewhere is None


def test_predicted_market_ids_are_the_models_batch_predictions_of_the_day(engine):
    model, other_model = new_model(engine), new_model(engine)
    today, yesterday_only, others = new_market(engine), new_market(engine), new_market(engine)
    store(engine, today, model)
    store(engine, yesterday_only, model, day=YESTERDAY)
    store(engine, others, other_model)
    with engine.connect() as conn:
        assert prediction_store.predicted_market_ids(conn, model, DAY) == {today}


def test_a_letter_keeps_the_time_it_was_first_settled(engine):
    model, market = new_model(engine), new_market(engine)
    resolved_at = sa.select(prediction_failures.c.resolved_at).where(
        prediction_failures.c.market_id == market
    )
    fail(engine, market, model)
    store(engine, market, model)
    with engine.connect() as conn:
        first = conn.scalar(resolved_at)
    assert first is not None
    assert store(engine, market, model) is None  # stored again (a re-run): nothing new
    with engine.connect() as conn:
        assert conn.scalar(resolved_at) == first


def test_a_long_error_is_cut_to_2000_characters(engine):
    model, market = new_model(engine), new_market(engine)
    fail(engine, market, model, error="x" * 5000)
    with engine.connect() as conn:
        [letter] = prediction_store.open_failures(conn, model)
    assert letter.last_error == "x" * 2000


# -- dead-letter list, asset checks, recent predictions -------------------------------------


def test_open_failures_are_the_unsettled_letters_newest_first_filtered_by_model_and_day(engine):
    model, other_model = new_model(engine), new_model(engine)
    first, second, other_day, settled, other = (new_market(engine) for _ in range(5))
    fail(engine, first, model)
    fail(engine, second, model, run_id="run-2")
    fail(engine, other_day, model, day=YESTERDAY)
    fail(engine, settled, model)
    store(engine, settled, model)  # settles its letter
    fail(engine, other, other_model)
    with engine.connect() as conn:
        todays = prediction_store.open_failures(conn, model, DAY)
        all_days = prediction_store.open_failures(conn, model)
        newest = prediction_store.open_failures(conn, model, limit=1)
        everyone = prediction_store.open_failures(conn)
    assert [r.market_id for r in todays] == [second, first]
    assert todays[0].source_id.startswith("m-") and todays[0].run_id == "run-2"
    assert [r.market_id for r in all_days] == [other_day, second, first]
    assert [r.market_id for r in newest] == [other_day]
    assert {first, second, other_day, other} <= {r.market_id for r in everyone}
    assert settled not in {r.market_id for r in everyone}


def test_batch_checks_count_no_duplicates_for_on_demand_rows_and_edge_probabilities(engine):
    model, market, edge = new_model(engine), new_market(engine), new_market(engine)
    store(engine, market, model)
    store(engine, market, model, origin="request", request_id=unique("req"))
    store(engine, market, model, origin="session", session_id=unique("s"))
    store(engine, edge, model, probability=1.0)
    store(engine, edge, model, probability=0.0, origin="request", request_id=unique("req"))
    with engine.connect() as conn:
        assert prediction_store.batch_duplicates(conn, model, DAY) == 0
        assert prediction_store.probabilities_out_of_range(conn, model, DAY) == 0


def test_recent_predictions_are_newest_first_filtered_by_model_and_day(engine):
    model, other_model = new_model(engine), new_model(engine)
    a, b, c, d = (new_market(engine) for _ in range(4))
    store(engine, a, model)
    store(engine, b, model)
    store(engine, c, model, day=YESTERDAY)
    store(engine, d, other_model)
    with engine.connect() as conn:
        todays = prediction_store.recent_predictions(conn, model, DAY)
        mine = prediction_store.recent_predictions(conn, model)
        latest = prediction_store.recent_predictions(conn, model, limit=1)
        everyone = prediction_store.recent_predictions(conn, limit=1000)
    assert [r.market_id for r in todays] == [b, a]
    assert todays[0].question == "Will it rain?" and todays[0].source_id.startswith("m-")
    assert [r.market_id for r in mine] == [c, b, a]
    assert [r.market_id for r in latest] == [c]
    assert {a, b, c, d} <= {r.market_id for r in everyone}


def test_the_checks_find_what_a_database_without_the_guards_could_hold():
    # The unique batch index and the probability CHECK make these rows impossible in a
    # migrated database; the checks are for one restored from elsewhere. A bare table
    # with the columns they read stands in for it.
    bare = sa.create_engine("sqlite://")
    with bare.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE predictions (id INTEGER PRIMARY KEY, market_id INTEGER, "
                "model_slug TEXT, day DATE, origin TEXT, probability FLOAT)"
            )
        )
        rows = [
            (1, "m", DAY, "batch", 0.5),
            (1, "m", DAY, "batch", 0.6),  # twice in the batch
            (2, "m", DAY, "batch", 0.5),  # once
            (3, "m", DAY, "batch", 1.5),
            (3, "m", DAY, "request", 0.5),  # a batch and an on-demand row: no duplicate
            (4, "m", DAY, "batch", -0.1),
            (5, "m", DAY, "batch", None),
            (6, "m", DAY, "batch", 0.0),
            (7, "m", DAY, "batch", 1.0),
            (8, "other", DAY, "batch", 2.0),  # another model's duplicates: not counted
            (8, "other", DAY, "batch", 0.5),
            (9, "other", DAY, "batch", 0.5),
            (9, "other", DAY, "batch", 0.5),
            (1, "m", YESTERDAY, "batch", 2.0),
            (1, "m", YESTERDAY, "batch", 0.5),
        ]
        for market, model, day, origin, probability in rows:
            conn.execute(
                sa.insert(predictions).values(
                    market_id=market,
                    model_slug=model,
                    day=day,
                    origin=origin,
                    probability=probability,
                )
            )
        assert prediction_store.batch_duplicates(conn, "m", DAY) == 1
        assert prediction_store.batch_duplicates(conn, "m", TOMORROW) == 0
        assert prediction_store.probabilities_out_of_range(conn, "m", DAY) == 3
        assert prediction_store.probabilities_out_of_range(conn, "m", TOMORROW) == 0


def test_the_lists_show_20_predictions_and_100_letters_unless_asked(engine):
    model = new_model(engine)
    markets_ = [new_market(engine) for _ in range(101)]
    for market in markets_:
        fail(engine, market, model)
    for market in markets_[:21]:
        store(engine, market, model, day=YESTERDAY)  # another day: the letters stay open
    with engine.connect() as conn:
        assert len(prediction_store.recent_predictions(conn, model)) == 20
        assert len(prediction_store.open_failures(conn, model)) == 100
