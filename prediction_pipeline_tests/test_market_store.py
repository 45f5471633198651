import datetime as dt

import sqlalchemy as sa

from prediction_pipeline.core.markets import Market, MarketStatus
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store.tables import market_snapshots, markets

DAY = dt.date(2026, 11, 2)


def _market(source_id="m1", price=0.4, status=MarketStatus.OPEN, **extra) -> Market:
    return Market(
        source="synthetic",
        source_id=source_id,
        question=f"Will {source_id} happen?",
        end_date=dt.datetime(2026, 12, 31, tzinfo=dt.UTC),
        volume=1000,
        yes_price=price,
        status=status,
        **extra,
    )


def _rows(conn, table):
    return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def test_ingest_twice_leaves_the_same_rows(engine):
    batch = [_market("m1"), _market("m2", 0.7)]
    with engine.begin() as conn:
        first = market_store.ingest_markets(conn, batch, DAY)
        markets_before, snaps_before = _rows(conn, markets), _rows(conn, market_snapshots)
    assert (first.new, first.updated, first.snapshots) == (2, 0, 2)
    with engine.begin() as conn:
        second = market_store.ingest_markets(conn, batch, DAY)
        assert (second.new, second.updated, second.unchanged) == (0, 0, 2)
        snaps_after = _rows(conn, market_snapshots)
        markets_after = _rows(conn, markets)
    assert [r["id"] for r in snaps_after] == [r["id"] for r in snaps_before]
    assert [(r["market_id"], r["day"], r["yes_price"]) for r in snaps_after] == [
        (r["market_id"], r["day"], r["yes_price"]) for r in snaps_before
    ]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "updated_at"} for r in rows]  # noqa: E731
    assert strip(markets_after) == strip(markets_before)


def test_consecutive_days_grow_history_and_count_transitions(engine):
    with engine.begin() as conn:
        market_store.ingest_markets(conn, [_market("m1"), _market("m2")], DAY)
        counts = market_store.ingest_markets(
            conn,
            [
                _market("m1", 0.45),
                _market("m2", 0.9, MarketStatus.CLOSED),
                _market("m3"),
            ],
            DAY + dt.timedelta(days=1),
        )
        assert (counts.new, counts.updated, counts.closed, counts.resolved) == (1, 2, 1, 0)
        counts = market_store.ingest_markets(
            conn,
            [_market("m2", 1.0, MarketStatus.RESOLVED, resolved_outcome="yes")],
            DAY + dt.timedelta(days=2),
        )
        assert counts.resolved == 1
        assert market_store.snapshot_count(conn) == 6
        prices = conn.execute(
            sa.select(market_snapshots.c.day, market_snapshots.c.yes_price)
            .join(markets)
            .where(markets.c.source_id == "m1")
            .order_by(market_snapshots.c.day)
        ).all()
    assert [p for _, p in prices] == [0.4, 0.45]


def test_backfilling_an_old_day_does_not_roll_state_back(engine):
    later = DAY + dt.timedelta(days=5)
    with engine.begin() as conn:
        market_store.ingest_markets(
            conn, [_market("m1", 1.0, MarketStatus.RESOLVED, resolved_outcome="yes")], later
        )
        counts = market_store.ingest_markets(conn, [_market("m1", 0.3)], DAY)
        assert counts.stale == 1
        row = conn.execute(sa.select(markets)).one()
        assert (row.status, row.resolved_outcome, row.yes_price) == ("resolved", "yes", 1.0)
        old = conn.execute(
            sa.select(market_snapshots.c.yes_price).where(market_snapshots.c.day == DAY)
        ).scalar_one()
        assert old == 0.3  # the old day's snapshot is still recorded


def test_unsettled_ids_exclude_active_and_resolved(engine):
    with engine.begin() as conn:
        market_store.ingest_markets(
            conn,
            [
                _market("a"),
                _market("b"),
                _market("c", 0.0, MarketStatus.RESOLVED, resolved_outcome="no"),
            ],
            DAY,
        )
        assert market_store.unsettled_source_ids(conn, "synthetic", ["a"]) == ["b"]
        assert market_store.unsettled_source_ids(conn, "polymarket", []) == []


def test_quality_queries(engine):
    with engine.begin() as conn:
        market_store.ingest_markets(conn, [_market("a"), _market("b", None)], DAY)
        assert market_store.snapshot_prices_out_of_range(conn, DAY) == 0
        assert market_store.duplicate_snapshots(conn, DAY) == 0
        assert market_store.markets_missing_snapshot(conn, DAY) == 0
        assert market_store.markets_without_question(conn) == 0
        conn.execute(
            sa.update(market_snapshots)
            .where(market_snapshots.c.yes_price.is_not(None))
            .values(yes_price=1.5)
        )
        conn.execute(sa.delete(market_snapshots).where(market_snapshots.c.yes_price.is_(None)))
        assert market_store.snapshot_prices_out_of_range(conn, DAY) == 1
        assert market_store.markets_missing_snapshot(conn, DAY) == 1
