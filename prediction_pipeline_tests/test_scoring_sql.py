"""Scores computed by the database (`store.scoring.score_resolutions`): hand values, the
market baseline, exclusions, idempotency, equality with the pandas path it replaced
(benchmarks/scoring_pandas.py), and SQLite without a built-in ln(); both engines."""

import datetime as dt
import math

import pytest
import sqlalchemy as sa

from benchmarks.scoring_pandas import pandas_score_resolutions
from prediction_pipeline.store import scoring as score_store
from prediction_pipeline.store.tables import forecast_scores, markets, predictions

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
DAY = dt.date(2026, 2, 1)
A, B = "baseline/market", "baseline/momentum"
EPS = 1e-4


def add_market(conn, key, status="resolved", outcome="yes", end=NOW, category="science"):
    return conn.execute(
        sa.insert(markets)
        .values(
            source="test",
            source_id=key,
            question=f"Will {key} happen?",
            tags=[],
            outcomes=["Yes", "No"],
            status=status,
            resolved_outcome=outcome,
            end_date=end,
            category=category,
            observed_day=NOW.date(),
            first_seen_at=NOW,
            updated_at=NOW,
        )
        .returning(markets.c.id)
    ).scalar_one()


def add_prediction(conn, market_id, p, price, model=A, day=DAY):
    return conn.execute(
        sa.insert(predictions)
        .values(
            market_id=market_id,
            model_slug=model,
            day=day,
            origin="batch",
            probability=p,
            market_price=price,
            created_at=NOW,
        )
        .returning(predictions.c.id)
    ).scalar_one()


def scores(engine) -> dict[int, sa.Row]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(forecast_scores)).all()
    return {r.prediction_id: r for r in rows}


def test_hand_values_exclusions_and_idempotency(engine):
    with engine.begin() as conn:
        yes = add_market(conn, "yes", end=dt.datetime(2026, 2, 8, 12, tzinfo=dt.UTC))
        no = add_market(conn, "no", outcome="no", end=None, category=None)
        void = add_market(conn, "void", outcome="void")
        closed = add_market(conn, "closed", status="closed", outcome=None)
        ids = {
            "yes_0.7": add_prediction(conn, yes, 0.7, 0.6),
            "yes_certain_miss": add_prediction(conn, yes, 0.0, None, model=B),
            "no_0.2": add_prediction(conn, no, 0.2, 1.0),
            "no_certain_hit": add_prediction(conn, no, 0.0, 0.5, model=B),
        }
        add_prediction(conn, void, 0.5, 0.5)
        add_prediction(conn, closed, 0.5, 0.5)
    with engine.begin() as conn:
        run = score_store.score_resolutions(conn)
        excluded = score_store.excluded_prediction_counts(conn)
    assert (run.rows, run.markets) == (4, 2)
    assert excluded == {"excluded_closed_unresolved": 1, "excluded_void": 1}

    got = scores(engine)
    assert set(got) == set(ids.values())
    r = got[ids["yes_0.7"]]
    assert (r.outcome, r.model_slug, r.category) == (1.0, A, "science")
    assert r.brier == pytest.approx(0.09) and r.log_score == pytest.approx(math.log(0.7))
    assert r.market_brier == pytest.approx(0.16)
    assert r.market_log_score == pytest.approx(math.log(0.6))
    assert r.horizon_days == 7.5  # 2026-02-01 00:00 UTC -> 2026-02-08 12:00 UTC
    r = got[ids["yes_certain_miss"]]  # p = 0 clipped to 1e-4: finite
    assert r.brier == 1.0 and r.log_score == pytest.approx(math.log(EPS))
    assert r.market_brier is None and r.market_log_score is None  # no price, no baseline
    r = got[ids["no_0.2"]]
    assert r.outcome == 0.0 and r.category is None and r.horizon_days is None
    assert r.brier == pytest.approx(0.04) and r.log_score == pytest.approx(math.log(0.8))
    assert r.market_brier == 1.0 and r.market_log_score == pytest.approx(math.log(EPS))
    r = got[ids["no_certain_hit"]]  # p = 0 on NO: clipped, ln(1 - 1e-4)
    assert r.brier == 0.0 and r.log_score == pytest.approx(math.log1p(-EPS))

    with engine.begin() as conn:  # nothing new: nothing written
        assert score_store.score_resolutions(conn) == score_store.ScoringRun(0, 0)
    with engine.begin() as conn:  # rescore: the same rows again, no duplicate
        assert score_store.score_resolutions(conn, rescore_all=True).rows == 4
    again = scores(engine)
    assert len(again) == 4
    assert {k: v.brier for k, v in again.items()} == {k: v.brier for k, v in got.items()}


def test_a_market_resolving_later_is_scored_by_the_next_run(engine):
    with engine.begin() as conn:
        first = add_market(conn, "first")
        later = add_market(conn, "later", status="open", outcome=None)
        add_prediction(conn, first, 0.6, 0.5)
        pending = add_prediction(conn, later, 0.3, 0.4)
        score_store.score_resolutions(conn)
        conn.execute(
            sa.update(markets)
            .where(markets.c.id == later)
            .values(status="resolved", resolved_outcome="no")
        )
    with engine.begin() as conn:
        run = score_store.score_resolutions(conn)
    assert (run.rows, run.markets) == (1, 1)
    assert scores(engine)[pending].brier == pytest.approx(0.09)


COMPARED = ("model_slug", "market_id", "category", "probability", "market_price", "outcome")
SCORES = ("brier", "log_score", "market_brier", "market_log_score", "horizon_days")


def test_sql_scores_equal_the_pandas_path_on_a_seeded_world(evaluation_world):
    engine = evaluation_world
    expected_rows, expected_markets = pandas_score_resolutions(engine)
    expected = scores(engine)
    assert expected_rows == len(expected) > 0
    with engine.begin() as conn:
        conn.execute(sa.delete(forecast_scores))
        run = score_store.score_resolutions(conn)
    got = scores(engine)
    assert (run.rows, run.markets) == (expected_rows, expected_markets)
    assert set(got) == set(expected)
    for prediction_id, old in expected.items():
        new = got[prediction_id]
        assert [new._mapping[c] for c in COMPARED] == [old._mapping[c] for c in COMPARED]
        for column in SCORES:
            a, b = new._mapping[column], old._mapping[column]
            # ln(1 - q) against numpy's log1p(-q): equal to ~1e-16 relative
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_sqlite_without_a_builtin_ln_uses_the_registered_function(engine, monkeypatch):
    if engine.dialect.name != "sqlite":
        pytest.skip("ln() is built into PostgreSQL")
    calls = []

    def python_ln(x):
        calls.append(x)
        return math.log(x)

    with engine.begin() as conn:
        market = add_market(conn, "m")
        add_prediction(conn, market, 0.7, 0.6)
        # Stand in for a SQLite built without math functions: the probe fails, the scoring
        # code registers its function (an application-defined one wins over a built-in).
        monkeypatch.setattr(
            score_store,
            "register_sqlite_ln",
            lambda c: c.create_function("ln", 1, python_ln, deterministic=True),
        )
        monkeypatch.setattr(
            conn,
            "exec_driver_sql",
            _failing_probe(conn.exec_driver_sql),
        )
        score_store.score_resolutions(conn)
    row = next(iter(scores(engine).values()))
    assert row.log_score == pytest.approx(math.log(0.7))
    assert len(calls) == 2  # the model's and the market's log score


def _failing_probe(original):
    def execute(statement, *args, **kwargs):
        if statement == "SELECT ln(1.0)":
            raise sa.exc.OperationalError(statement, {}, Exception("no such function: ln"))
        return original(statement, *args, **kwargs)

    return execute
