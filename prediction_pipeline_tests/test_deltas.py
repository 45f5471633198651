"""Delta snapshots computed by the database, against hand-computed values (both engines)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from prediction_pipeline.core.deltas import Mover, summarize
from prediction_pipeline.services.deltas import snapshot_deltas
from prediction_pipeline.store.deltas import InvalidPriceError
from prediction_pipeline.store.tables import (
    market_snapshots,
    markets,
    prediction_deltas,
    predictions,
)

SNAPSHOT = dt.date(2026, 1, 5)
D1 = dt.date(2026, 1, 1)
A, B = "baseline/market", "baseline/momentum"  # registered by the migrations
NOW = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)


def add_market(conn, key: str, then: float | None, now: float | None, **extra) -> int:
    """A market with a snapshot on D1 (`then`) and on SNAPSHOT (`now`; None: no price)."""
    row = {
        "source": "test",
        "source_id": key,
        "question": f"Will {key} happen?",
        "tags": [],
        "outcomes": ["Yes", "No"],
        "status": "open",
        "observed_day": SNAPSHOT,
        "first_seen_at": NOW,
        "updated_at": NOW,
        "category": extra.pop("category", "science"),
    }
    market_id = conn.execute(sa.insert(markets).values(row).returning(markets.c.id)).scalar_one()
    status = extra.pop("status", "open")
    for day, price in ((D1, then), (SNAPSHOT, now)):
        conn.execute(
            sa.insert(market_snapshots).values(
                market_id=market_id, day=day, observed_at=NOW, yes_price=price, status=status
            )
        )
    return market_id


def add_prediction(conn, market_id: int, model: str, day: dt.date, p: float, then) -> int:
    return conn.execute(
        sa.insert(predictions)
        .values(
            market_id=market_id,
            model_slug=model,
            day=day,
            origin="batch",
            probability=p,
            market_price=then,
            created_at=NOW,
        )
        .returning(predictions.c.id)
    ).scalar_one()


def rows(engine) -> dict[int, tuple]:
    d = prediction_deltas.c
    with engine.connect() as conn:
        columns = (d.prediction_id, d.market_price, d.price_then, d.delta, d.abs_delta)
        found = conn.execute(
            sa.select(*columns, d.direction).where(d.snapshot_day == SNAPSHOT)
        ).all()
    return {r.prediction_id: r for r in found}


@pytest.fixture
def hand_world(engine):
    """The hand-computed cases; ids by name."""
    ids = {}
    with engine.begin() as conn:
        m1 = add_market(conn, "m1", 0.5, 0.6)
        m2 = add_market(conn, "m2", 0.5, 0.5)
        m3 = add_market(conn, "m3", 0.5, None)  # no price today
        m4 = add_market(conn, "m4", 0.4, 0.6)
        ids["toward"] = add_prediction(conn, m1, A, D1, 0.7, 0.5)  # 0.1 < 0.2
        ids["away"] = add_prediction(conn, m1, B, D1, 0.4, 0.5)  # 0.2 > 0.1
        ids["flat"] = add_prediction(conn, m2, A, D1, 0.3, 0.5)  # unchanged price
        ids["unknown"] = add_prediction(conn, m2, B, D1, 0.3, None)  # no price then
        ids["no_price"] = add_prediction(conn, m3, A, D1, 0.5, 0.5)
        ids["after"] = add_prediction(conn, m1, A, dt.date(2026, 1, 6), 0.5, 0.6)
        ids["on_day"] = add_prediction(conn, m1, B, SNAPSHOT, 0.5, 0.6)  # not before the day
        ids["mirror"] = add_prediction(conn, m4, B, D1, 0.5, 0.4)  # 0.4 -> 0.6 around 0.5
    return ids


def test_hand_values(engine, hand_world):
    ids = hand_world
    summary = snapshot_deltas(engine, SNAPSHOT)
    got = rows(engine)
    expected = {  # id: (price now, price then, delta, direction)
        "toward": (0.6, 0.5, -0.1, "toward"),
        "away": (0.6, 0.5, 0.2, "away"),
        "flat": (0.5, 0.5, 0.2, "flat"),
        "unknown": (0.5, None, 0.2, "unknown"),
        "mirror": (0.6, 0.4, 0.1, "flat"),
    }
    assert set(got) == {ids[k] for k in expected}
    for key, (now, then, delta, direction) in expected.items():
        row = got[ids[key]]
        assert row.market_price == pytest.approx(now), key
        assert row.price_then == (None if then is None else pytest.approx(then)), key
        assert row.delta == pytest.approx(delta), key
        assert row.abs_delta == pytest.approx(abs(delta)), key
        assert row.direction == direction, key

    assert summary.rows == 5 and summary.statements == 7  # one per window day
    assert summary.by_direction == {"away": 1, "flat": 2, "toward": 1, "unknown": 1}
    # A: toward 0.1, flat 0.2 -> 0.15; B: away 0.2, unknown 0.2, mirror 0.1 -> 0.1667
    assert summary.mean_abs_delta_by_model == {A: 0.15, B: 0.1667}
    # largest |delta| first, ties by prediction id
    ranked = sorted(got.values(), key=lambda r: (-r.abs_delta, r.prediction_id))
    assert [m.prediction_id for m in summary.movers] == [r.prediction_id for r in ranked]
    first = next(m for m in summary.movers if m.prediction_id == ids["away"])
    assert (first.source_id, first.model, first.question) == ("m1", B, "Will m1 happen?")


def test_movers_ties_go_by_prediction_id_and_n_caps_them(engine):
    with engine.begin() as conn:
        market = add_market(conn, "m", 0.5, 0.9)
        later = add_prediction(conn, market, B, D1, 0.5, 0.5)
        earlier = add_prediction(conn, market, A, D1 - dt.timedelta(days=1), 0.5, 0.5)
        add_prediction(conn, market, A, D1, 0.6, 0.5)  # |delta| 0.3: smaller
    summary = snapshot_deltas(engine, SNAPSHOT, top_movers=2)
    assert [m.prediction_id for m in summary.movers] == [later, earlier]


@pytest.mark.parametrize(
    ("probability", "then", "now", "direction"),
    [
        (0.8, 0.3, 0.5, "toward"),
        (0.8, 0.5, 0.3, "away"),
        (0.2, 0.5, 0.3, "toward"),
        (0.2, 0.3, 0.9, "away"),
        (0.6, 0.9, 0.35, "toward"),  # crossed p and ended closer: 0.25 < 0.3
        (0.6, 0.7, 0.4, "away"),  # crossed p and ended further: 0.2 > 0.1
        (0.1, 0.3, 0.3, "flat"),
        (0.0, 0.5, 1.0, "away"),  # the extremes: delta 1
        (1.0, 0.5, 0.0, "away"),  # and -1
    ],
)
def test_direction_cases(engine, probability, then, now, direction):
    with engine.begin() as conn:
        market = add_market(conn, "m", then, now)
        add_prediction(conn, market, A, D1, probability, then)
    snapshot_deltas(engine, SNAPSHOT)
    (row,) = rows(engine).values()
    assert row.direction == direction
    assert row.delta == pytest.approx(now - probability)
    assert -1 <= row.delta <= 1


def test_rerun_is_idempotent_and_a_cap_takes_the_oldest_first(engine, hand_world):
    ids = hand_world
    snapshot_deltas(engine, SNAPSHOT, max_predictions=2, chunk_size=1)
    assert set(rows(engine)) == {ids["toward"], ids["away"]}  # (day, id) order
    first = snapshot_deltas(engine, SNAPSHOT, chunk_size=2)
    again = snapshot_deltas(engine, SNAPSHOT, chunk_size=3)
    assert first.rows == again.rows == 5 and rows(engine) == rows(engine)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(prediction_deltas)) == 5


def test_closed_markets_and_excluded_categories(engine):
    with engine.begin() as conn:
        closed = add_market(conn, "closed", 0.5, 0.9, status="closed")
        politics = add_market(conn, "politics", 0.5, 0.6, category="Politics")
        uncategorized = add_market(conn, "none", 0.5, 0.6, category=None)
        ids = [add_prediction(conn, m, A, D1, 0.5, 0.5) for m in (closed, politics, uncategorized)]
    assert snapshot_deltas(engine, SNAPSHOT).rows == 2
    assert set(rows(engine)) == {ids[1], ids[2]}
    assert snapshot_deltas(engine, SNAPSHOT, include_closed_markets=True).rows == 3
    summary = snapshot_deltas(engine, SNAPSHOT, exclude_categories=["  politics ", ""])
    assert summary.rows == 1 and summary.movers[0].prediction_id == ids[2]


def test_an_empty_window_is_an_empty_summary(engine):
    summary = snapshot_deltas(engine, SNAPSHOT)
    assert (summary.rows, summary.statements, summary.movers) == (0, 7, [])
    assert summary.by_direction == {} and summary.mean_abs_delta_by_model == {}


@pytest.mark.parametrize("bad", ["now", "then"])
def test_a_price_outside_the_unit_interval_fails_before_writing(engine, bad):
    with engine.begin() as conn:
        good = add_market(conn, "good", 0.5, 0.6)
        add_prediction(conn, good, A, D1, 0.5, 0.5)
        if bad == "now":
            market = add_market(conn, "bad", 0.5, 1.5)
            add_prediction(conn, market, A, D1, 0.5, 0.5)
        else:
            add_prediction(conn, good, B, D1, 0.5, -0.2)
    with pytest.raises(InvalidPriceError, match=r"outside \[0, 1\]"):
        snapshot_deltas(engine, SNAPSHOT)
    assert rows(engine) == {}  # nothing written


def test_summarize_folds_aggregates():
    mover = Mover(1, A, "m1", "q", 0.6, 0.2, 0.2, "away")
    summary = summarize(
        [(B, "away", 2, 0.5), (A, "toward", 1, 0.1), (A, "away", 3, 0.2)], 4, [mover]
    )
    assert summary.rows == 6 and summary.statements == 4
    assert summary.by_direction == {"away": 5, "toward": 1}
    assert summary.mean_abs_delta_by_model == {A: 0.075, B: 0.25}
    assert list(summary.by_direction) == sorted(summary.by_direction)
    assert summary.movers == [mover]
