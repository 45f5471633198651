import datetime as dt

import pytest
import sqlalchemy as sa

from prediction_pipeline.core.markets import Market, MarketStatus
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import users as user_store
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


# -- values from outside fitted to their columns (both databases) ---------------------------


def test_a_200_character_tag_label_does_not_fail_the_day(engine):
    """The issue's case: one Gamma record whose category comes from a 200-character tag label
    failed the whole day on PostgreSQL (DataError, 0 of 11 stored; SQLite stored all 11)."""
    batch = [_market(f"m{i}") for i in range(10)] + [_market("long", category="T" * 200)]
    with engine.begin() as conn:
        market_store.ingest_markets(conn, batch, DAY)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(markets)) == 11
        assert len(market_store.get_market(conn, "long").category) == 128


def test_every_string_is_fitted_to_its_column_and_one_bad_market_never_fails_the_batch(engine):
    """A 200-character tag label used to fail the whole day on PostgreSQL (DataError, 0 of 11
    stored) while SQLite stored all 11: now both store the same fitted values."""
    good = [_market(f"m{i}") for i in range(9)]
    long_label = _market("long-label", category="L" * 200, tags=("L" * 200, "Short"))
    long_slug = _market("long-slug", slug="s" * 600, description="d\x00" * 3)
    long_slug = long_slug.model_copy(update={"question": "Q\x00?"})
    long_id = _market("x" * 129)  # a key cannot be cut (two markets could merge): rejected
    nul_id = _market("n\x00ul")
    batch = [*good, long_label, long_slug, long_id, nul_id]
    with engine.begin() as conn:
        counts = market_store.ingest_markets(conn, batch, DAY)
    assert (counts.new, counts.snapshots, counts.truncated) == (11, 11, 2)
    assert [(s.source_id, s.reason) for s in counts.rejected] == [
        ("x" * 120, "source_id is longer than 128 characters"),
        ("n\x00ul", "source_id contains a NUL character"),
    ]
    with engine.connect() as conn:
        label = market_store.get_market(conn, "long-label")
        slug = market_store.get_market(conn, "long-slug")
        assert market_store.get_market(conn, "x" * 129) is None
    assert label.category == "L" * 127 + "…" and len(label.category) == 128
    assert label.tags == ["L" * 200, "Short"]  # JSON has no length: kept whole
    assert len(slug.slug) == 512 and slug.slug.endswith("…")
    assert (slug.question, slug.description) == ("Q?", "ddd")  # PostgreSQL cannot hold NUL

    # Re-ingesting compares fitted values with fitted values: nothing changes.
    with engine.begin() as conn:
        again = market_store.ingest_markets(conn, [*good, long_label, long_slug], DAY)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 11)


@pytest.mark.parametrize(
    "ref",
    ["²", "١٢", "9" * 30, "2147483648", "0", "-1", "+1", "", "   ", "a\x00b", "z" * 500],
)
def test_market_refs_that_match_nothing_are_none(engine, ref):
    """Superscript and Arabic-Indic digits pass str.isdigit() but not int(); a 30-digit number
    overflows SQLite's INTEGER; NUL is refused by PostgreSQL: all simply match nothing."""
    with engine.begin() as conn:
        market_store.ingest_markets(conn, [_market("m1")], DAY)
        assert market_store.get_market(conn, ref) is None
        assert market_store.market_ids(conn, [ref]) == {}
        with pytest.raises(LookupError, match="no market"):
            user_store.resolve_market(conn, ref)


def test_market_refs_by_internal_id_or_source_id(engine):
    with engine.begin() as conn:
        market_store.ingest_markets(conn, [_market("m1"), _market("m2")], DAY)
        m1 = market_store.get_market(conn, "m1").id
        m2 = market_store.get_market(conn, "m2").id
        # A source id that looks like another market's internal id: the lowest id wins.
        market_store.ingest_markets(conn, [_market(str(m1))], DAY)
        assert market_store.get_market(conn, m2).source_id == "m2"
        assert market_store.get_market(conn, f" {m2} ").id == m2
        assert market_store.get_market(conn, str(m1)).id == m1
        refs = ["m1", str(m2), str(m1), "nope", "²"]
        assert market_store.market_ids(conn, refs) == {"m1": m1, str(m2): m2, str(m1): m1}
