"""Market ingest: one day's markets from a source into the app database, and the day's
data-quality figures that the `markets` asset checks report."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.clients.market_sources import MarketSource
from prediction_pipeline.core.markets import Market, MarketBatch, SkippedMarket
from prediction_pipeline.store import markets as market_store


@dataclass(frozen=True)
class MarketIngest:
    source: str
    markets: list[Market]  # every market offered to the store: active ones and looked-up ones
    counts: market_store.IngestCounts
    skipped: list[SkippedMarket]  # not stored: unparseable at the source, or rejected by the store
    looked_up: int  # held markets no longer active, fetched again for their closing/resolution

    @property
    def stored(self) -> int:
        return len(self.markets) - len(self.counts.rejected)


@dataclass(frozen=True)
class MarketDayQuality:
    out_of_range: int  # snapshot prices outside [0, 1]
    duplicates: int  # markets with two snapshots for the day
    missing: int  # markets observed on the day without a snapshot
    snapshots: int
    empty_questions: int


def ingest_day(engine: sa.Engine, source: MarketSource, day: dt.date) -> MarketIngest:
    """Fetch the markets active on `day`, refresh every unsettled market we hold that left the
    active list, and upsert them all with one snapshot each for the day (one transaction)."""
    active = source.fetch_active(day)
    # Markets that left the active list still need their closing and resolution recorded.
    active_ids = [m.source_id for m in active.markets]
    with engine.connect() as conn:
        to_refresh = market_store.unsettled_source_ids(conn, source.name, active_ids)
    refreshed = source.lookup(to_refresh, day) if to_refresh else MarketBatch()
    batch = active.markets + refreshed.markets
    with engine.begin() as conn:
        counts = market_store.ingest_markets(conn, batch, day)
    return MarketIngest(
        source=source.name,
        markets=batch,
        counts=counts,
        skipped=[*active.skipped, *refreshed.skipped, *counts.rejected],
        looked_up=len(to_refresh),
    )


def day_quality(engine: sa.Engine, day: dt.date) -> MarketDayQuality:
    with engine.connect() as conn:
        return MarketDayQuality(
            out_of_range=market_store.snapshot_prices_out_of_range(conn, day),
            duplicates=market_store.duplicate_snapshots(conn, day),
            missing=market_store.markets_missing_snapshot(conn, day),
            snapshots=market_store.snapshot_count(conn, day),
            empty_questions=market_store.markets_without_question(conn),
        )
