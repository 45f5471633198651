"""Delta snapshots for one day, computed by the database: one set-based upsert per chunk
of the window, the summary from SQL aggregates. Memory does not depend on the window."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from prediction_pipeline.core.deltas import DeltaSummary, summarize
from prediction_pipeline.store import deltas as delta_store

# Prices outside [0, 1]: bad data that a retry cannot fix (callers fail without retrying).
InvalidPriceError = delta_store.InvalidPriceError


def snapshot_deltas(
    engine: sa.Engine,
    snapshot_day: dt.date,
    *,
    days_lookback: int = 7,
    max_predictions: int | None = None,
    include_closed_markets: bool = False,
    exclude_categories: Sequence[str] = (),
    chunk_size: int = 200_000,
    top_movers: int = 10,
) -> DeltaSummary:
    """Upsert the deltas of every prediction made in the `days_lookback` days before
    `snapshot_day`: one statement per day, or per `chunk_size` predictions of a bigger day,
    each in its own transaction (a SQLite writer lock is held for one chunk at a time);
    oldest (day, id) first, at most `max_predictions` rows. Raises `InvalidPriceError`
    (nothing written) on prices outside [0, 1]. The summary covers the rows this run wrote
    (stamped with one `computed_at`)."""
    computed_at = dt.datetime.now(dt.UTC)
    with engine.connect() as conn:
        delta_store.check_prices(conn, snapshot_day, days_lookback)
    statements, remaining = 0, max_predictions
    for day in delta_store.window_days(snapshot_day, days_lookback):
        after = None
        while remaining is None or remaining > 0:
            with engine.begin() as conn:
                up_to = delta_store.chunk_end(conn, day, after, chunk_size)
                written = delta_store.upsert_chunk(
                    conn,
                    snapshot_day,
                    day,
                    after,
                    up_to,
                    computed_at,
                    include_closed_markets=include_closed_markets,
                    exclude_categories=exclude_categories,
                    limit=remaining,
                )
            statements += 1
            if remaining is not None:
                remaining -= written
            if up_to is None:
                break
            after = up_to
    with engine.begin() as conn:
        delta_store.refresh_statistics(conn)
        groups = delta_store.run_aggregates(conn, snapshot_day, computed_at)
        movers = delta_store.largest_movers(conn, snapshot_day, computed_at, top_movers)
    return summarize(groups, statements, movers)


def delta_quality(engine: sa.Engine, snapshot_day: dt.date) -> dict[str, int]:
    """The day's data-quality counts: duplicates per (prediction, day), rows, and deltas
    outside [-1, 1]."""
    with engine.connect() as conn:
        return delta_store.delta_quality(conn, snapshot_day)
