"""The delta path production used until issue 12, kept ONLY as the benchmark's baseline
("before") and as the oracle the tests compare the set-based SQL path against.

Chunked keyset reads of the window into pandas, `compute_deltas` on each chunk, bulk upserts
back (COPY into a temporary table on PostgreSQL, executemany on SQLite), summary metadata
accumulated in Python. Frozen: do not use it in production code.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlalchemy as sa

from prediction_pipeline.core.deltas import DISTANCE_TOLERANCE
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    market_snapshots,
    markets,
    prediction_deltas,
    predictions,
)

# -- core: the rule on frames --------------------------------------------------------------

DIRECTIONS: tuple[str, ...] = ("toward", "away", "flat", "unknown")
PREDICTION_COLUMNS: tuple[str, ...] = (
    "prediction_id",
    "market_id",
    "day",
    "probability",
    "market_price",
)
PRICE_COLUMNS: tuple[str, ...] = ("market_id", "yes_price")
DELTA_COLUMNS: tuple[str, ...] = (
    "prediction_id",
    "snapshot_day",
    "market_price",
    "delta",
    "abs_delta",
    "direction",
)


def _check_unit_interval(values: pd.Series, name: str) -> None:
    bad = values.notna() & ((values < 0.0) | (values > 1.0))
    if bad.any():
        raise ValueError(f"{name} must lie in [0, 1]; got {values[bad].head(5).tolist()}")


def _as_day(value) -> dt.date:
    return pd.Timestamp(value).date()


def _empty_deltas() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prediction_id": pd.Series(dtype=object),
            "snapshot_day": pd.Series(dtype=object),
            "market_price": pd.Series(dtype="float64"),
            "delta": pd.Series(dtype="float64"),
            "abs_delta": pd.Series(dtype="float64"),
            "direction": pd.Series(dtype=object),
        }
    )


def compute_deltas(predictions: pd.DataFrame, prices: pd.DataFrame, snapshot_day) -> pd.DataFrame:
    """Compare each prediction with its market's price on `snapshot_day`.

    predictions: ``prediction_id, market_id, day`` (the day it was made), ``probability`` and
    ``market_price`` (the YES price when it was made; may be NaN). Other columns (``model``...)
    are allowed and ignored.
    prices: ``market_id, yes_price``, the YES price on `snapshot_day`, at most one per market.

    Returns one row per prediction made on or before `snapshot_day` whose market has a price
    that day (others are left out: no price, no delta; a prediction made after the snapshot
    has not drifted yet), with columns
      prediction_id, snapshot_day (a datetime.date), market_price (on the snapshot day),
      delta = market_price - probability (in [-1, 1]), abs_delta = |delta|,
      direction: "toward" if the market moved toward the prediction since it was made
      (|price_now - p| < |price_then - p|), "away" if it moved away (>), "flat" if its
      distance to the prediction did not change (an unchanged price, or a jump to the
      mirror price on the other side of p), "unknown" if price_then is missing.
    Raises ValueError on missing columns, prices or probabilities outside [0, 1], or a market
    with more than one price.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    missing += [c for c in PRICE_COLUMNS if c not in prices.columns]
    if missing:
        raise ValueError(f"compute_deltas: missing columns {missing}")
    day = _as_day(snapshot_day)

    now = prices[list(PRICE_COLUMNS)].astype({"yes_price": "float64"})
    now = now[now["yes_price"].notna()]
    _check_unit_interval(now["yes_price"], "yes_price")
    duplicated = now["market_id"].duplicated(keep=False)
    if duplicated.any():
        markets = now.loc[duplicated, "market_id"].unique().tolist()[:5]
        raise ValueError(f"compute_deltas: more than one price for markets {markets}")

    preds = predictions[list(PREDICTION_COLUMNS)].astype(
        {"probability": "float64", "market_price": "float64"}
    )
    if preds["probability"].isna().any():
        raise ValueError("compute_deltas: probability must not be missing")
    _check_unit_interval(preds["probability"], "probability")
    _check_unit_interval(preds["market_price"], "market_price")
    made = pd.to_datetime(preds["day"])
    if made.dt.tz is not None:  # an aware timestamp: compare its own calendar day
        made = made.dt.tz_localize(None)
    made = made.dt.normalize()
    preds = preds[(made <= pd.Timestamp(day)).to_numpy()]

    joined = preds.rename(columns={"market_price": "price_then"}).merge(
        now.rename(columns={"yes_price": "price_now"}), on="market_id", how="inner"
    )
    if joined.empty:
        return _empty_deltas()

    p = joined["probability"].to_numpy()
    then = joined["price_then"].to_numpy()
    current = joined["price_now"].to_numpy()
    delta = current - p
    gap_now = np.abs(delta)
    gap_then = np.abs(then - p)
    direction = np.select(
        [
            np.isnan(then),
            np.abs(gap_now - gap_then) <= DISTANCE_TOLERANCE,
            gap_now < gap_then,
        ],
        ["unknown", "flat", "toward"],
        default="away",
    )
    return pd.DataFrame(
        {
            "prediction_id": joined["prediction_id"].to_numpy(),
            "snapshot_day": np.full(len(joined), day, dtype=object),
            "market_price": current,
            "delta": delta,
            "abs_delta": gap_now,
            "direction": direction.astype(object),
        }
    )[list(DELTA_COLUMNS)]


# -- store: chunked reads, bulk writes -----------------------------------------------------

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


# -- service: the loop ---------------------------------------------------------------------


@dataclass
class DeltaSummary:
    rows: int = 0
    chunks: int = 0
    by_direction: dict[str, int] = field(default_factory=dict)
    # Running sums per model: the mean is taken at the end, so no chunk is kept in memory.
    abs_sum: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    movers: pd.DataFrame = field(default_factory=pd.DataFrame)

    def mean_abs_delta_by_model(self) -> dict[str, float]:
        return {m: round(self.abs_sum[m] / self.count[m], 4) for m in sorted(self.count)}


def chunked_snapshot_deltas(
    engine: sa.Engine,
    snapshot_day: dt.date,
    *,
    days_lookback: int = 7,
    max_predictions: int | None = None,
    include_closed_markets: bool = False,
    exclude_categories: Sequence[str] = (),
    chunk_size: int = 50_000,
    top_movers: int = 10,
) -> DeltaSummary:
    summary = DeltaSummary()
    with engine.connect() as reader:
        chunks = iter_window_chunks(
            reader,
            snapshot_day,
            days_lookback,
            include_closed_markets=include_closed_markets,
            exclude_categories=exclude_categories,
            max_predictions=max_predictions,
            chunk_size=chunk_size,
        )
        for chunk in chunks:
            prices = chunk[["market_id", "yes_price"]].drop_duplicates("market_id")
            deltas = compute_deltas(chunk, prices, snapshot_day)
            lookup = chunk.set_index("prediction_id")
            deltas["price_then"] = deltas["prediction_id"].map(lookup["market_price"])
            deltas["model"] = deltas["prediction_id"].map(lookup["model"])
            with engine.begin() as writer:
                summary.rows += upsert_deltas(writer, deltas.drop(columns="model"))
            summary.chunks += 1
            for direction, n in deltas["direction"].value_counts().items():
                summary.by_direction[direction] = summary.by_direction.get(direction, 0) + int(n)
            grouped = deltas.groupby("model")["abs_delta"].agg(["sum", "count"])
            for model, row in grouped.iterrows():
                summary.abs_sum[model] = summary.abs_sum.get(model, 0.0) + float(row["sum"])
                summary.count[model] = summary.count.get(model, 0) + int(row["count"])
            summary.movers = (
                pd.concat([summary.movers, deltas.nlargest(top_movers, "abs_delta")])
                .nlargest(top_movers, "abs_delta")
                .reset_index(drop=True)
            )
    return summary
