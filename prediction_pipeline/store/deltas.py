"""Service functions for prediction deltas: read the window in chunks, write in bulk."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Sequence

import pandas as pd
import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    market_snapshots,
    markets,
    prediction_deltas,
    predictions,
)

#: Columns a chunk frame carries (see `iter_window_chunks`).
CHUNK_COLUMNS = (
    "prediction_id",
    "model",
    "market_id",
    "day",
    "probability",
    "market_price",
    "yes_price",
)


def iter_window_chunks(
    conn: sa.Connection,
    snapshot_day: dt.date,
    days_lookback: int,
    *,
    include_closed_markets: bool = False,
    exclude_categories: Sequence[str] = (),
    max_predictions: int | None = None,
    chunk_size: int = 50_000,
) -> Iterator[pd.DataFrame]:
    """Predictions made in [snapshot_day - days_lookback, snapshot_day) joined with their
    market's snapshot on `snapshot_day`, `chunk_size` rows at a time, so memory stays
    bounded whatever the window holds. Keyset on (day, id): the day index serves both the
    filter and the order (on SQLite the rowid is the index's tail), so no chunk re-sorts
    the window."""
    start = snapshot_day - dt.timedelta(days=days_lookback)
    query = (
        sa.select(
            predictions.c.id.label("prediction_id"),
            predictions.c.model_slug.label("model"),
            predictions.c.market_id,
            predictions.c.day,
            predictions.c.probability,
            predictions.c.market_price,
            market_snapshots.c.yes_price,
        )
        .join(
            market_snapshots,
            sa.and_(
                market_snapshots.c.market_id == predictions.c.market_id,
                market_snapshots.c.day == snapshot_day,
            ),
        )
        .join(markets, markets.c.id == predictions.c.market_id)
        .where(
            predictions.c.day >= start,
            predictions.c.day < snapshot_day,
            market_snapshots.c.yes_price.is_not(None),
        )
        .order_by(predictions.c.day, predictions.c.id)
    )
    if not include_closed_markets:
        query = query.where(market_snapshots.c.status == "open")
    excluded = [c.lower() for c in exclude_categories if c.strip()]
    if excluded:
        query = query.where(
            sa.or_(markets.c.category.is_(None), sa.func.lower(markets.c.category).not_in(excluded))
        )
    remaining = max_predictions
    after = None  # (day, id) of the last row read
    while remaining is None or remaining > 0:
        size = chunk_size if remaining is None else min(chunk_size, remaining)
        page = (
            query
            if after is None
            else query.where(sa.tuple_(predictions.c.day, predictions.c.id) > sa.tuple_(*after))
        )
        rows = conn.execute(page.limit(size)).all()
        if not rows:
            return
        frame = pd.DataFrame(rows, columns=list(CHUNK_COLUMNS))
        after = (rows[-1].day, rows[-1].prediction_id)
        if remaining is not None:
            remaining -= len(frame)
        yield frame
        if len(rows) < size:
            return


_DELTA_COLUMNS = (
    "prediction_id",
    "snapshot_day",
    "market_price",
    "price_then",
    "delta",
    "abs_delta",
    "direction",
    "computed_at",
)
_UPDATED = _DELTA_COLUMNS[2:]


def upsert_deltas(conn: sa.Connection, deltas: pd.DataFrame) -> int:
    """Write deltas (with their `price_then`) idempotently per (prediction, snapshot day)."""
    if deltas.empty:
        return 0
    frame = deltas.assign(computed_at=dt.datetime.now(dt.UTC))[list(_DELTA_COLUMNS)]
    if conn.dialect.name == "postgresql":
        return _copy_upsert_postgresql(conn, frame)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")  # NaN -> NULL
    insert = dialect_insert(conn, prediction_deltas)
    statement = insert.on_conflict_do_update(
        index_elements=["prediction_id", "snapshot_day"],
        set_={c: insert.excluded[c] for c in _UPDATED},
    ).returning(prediction_deltas.c.id)  # RETURNING lets SQLAlchemy batch rows per statement
    for offset in range(0, len(rows), 5_000):
        conn.execute(statement, rows[offset : offset + 5_000]).all()
    return len(rows)


def _copy_upsert_postgresql(conn: sa.Connection, frame: pd.DataFrame) -> int:
    """PostgreSQL: COPY the chunk into a temporary table, then one INSERT ... SELECT ...
    ON CONFLICT. An executemany of upserts costs a round trip per row; COPY streams."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
    buffer.seek(0)
    columns = ", ".join(_DELTA_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _UPDATED)
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS deltas_incoming "
        "(LIKE prediction_deltas INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(
            f"COPY deltas_incoming ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer
        )
    finally:
        cursor.close()
    conn.exec_driver_sql(
        f"INSERT INTO prediction_deltas ({columns}) SELECT {columns} FROM deltas_incoming "
        f"ON CONFLICT (prediction_id, snapshot_day) DO UPDATE SET {updates}"
    )
    conn.exec_driver_sql("TRUNCATE deltas_incoming")
    return len(frame)


def describe_predictions(conn: sa.Connection, prediction_ids: Sequence[int]) -> pd.DataFrame:
    """Model, market and question of a few predictions (for previews)."""
    query = (
        sa.select(
            predictions.c.id.label("prediction_id"),
            predictions.c.model_slug.label("model"),
            markets.c.source_id,
            markets.c.question,
        )
        .join(markets, markets.c.id == predictions.c.market_id)
        .where(predictions.c.id.in_(list(prediction_ids)))
    )
    return pd.DataFrame(conn.execute(query).all(), columns=list(query.selected_columns.keys()))


def delta_quality(conn: sa.Connection, snapshot_day: dt.date) -> dict[str, int]:
    """Duplicates per (prediction, day) and deltas outside [-1, 1] for the day."""
    dupes = (
        sa.select(prediction_deltas.c.prediction_id)
        .where(prediction_deltas.c.snapshot_day == snapshot_day)
        .group_by(prediction_deltas.c.prediction_id)
        .having(sa.func.count() > 1)
        .subquery()
    )
    out_of_range = sa.select(sa.func.count()).where(
        prediction_deltas.c.snapshot_day == snapshot_day,
        sa.or_(prediction_deltas.c.delta < -1, prediction_deltas.c.delta > 1),
    )
    total = sa.select(sa.func.count()).where(prediction_deltas.c.snapshot_day == snapshot_day)
    return {
        "rows": conn.scalar(total) or 0,
        "duplicates": conn.scalar(sa.select(sa.func.count()).select_from(dupes)) or 0,
        "out_of_range": conn.scalar(out_of_range) or 0,
    }
