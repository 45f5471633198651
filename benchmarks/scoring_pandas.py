"""The scoring path production used until issue 12, kept ONLY as the benchmark's baseline
("before") and as the oracle the tests compare the set-based SQL path against.

Every unscored prediction on a resolved market is read into pandas at once, scored with
numpy (Brier, log score with p clipped to [1e-4, 1 - 1e-4], the same for the market price)
and upserted back with an executemany, 5,000 rows a statement. Memory grows with the number
of predictions. Frozen: do not use it in production code.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import forecast_scores, markets, predictions

LOG_SCORE_EPS = 1e-4
SCORE_COLUMNS = (
    "prediction_id",
    "model",
    "market_id",
    "category",
    "probability",
    "market_price",
    "outcome",
    "horizon_days",
)


def _utc(value):
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)


def resolved_predictions(conn: sa.Connection, rescore_all: bool = False) -> pd.DataFrame:
    """Predictions on markets resolved YES or NO (not yet scored unless `rescore_all`)."""
    query = (
        sa.select(
            predictions.c.id.label("prediction_id"),
            predictions.c.model_slug.label("model"),
            predictions.c.market_id,
            markets.c.category,
            predictions.c.probability,
            predictions.c.market_price,
            markets.c.resolved_outcome,
            markets.c.end_date,
            predictions.c.day,
        )
        .join(markets, markets.c.id == predictions.c.market_id)
        .where(markets.c.status == "resolved", markets.c.resolved_outcome.in_(["yes", "no"]))
    )
    if not rescore_all:
        scored = sa.exists().where(forecast_scores.c.prediction_id == predictions.c.id)
        query = query.where(~scored)
    rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=list(query.selected_columns.keys()))
    if frame.empty:
        return pd.DataFrame(columns=list(SCORE_COLUMNS))
    frame["outcome"] = (frame["resolved_outcome"] == "yes").astype(float)
    end = pd.to_datetime(frame["end_date"].map(_utc), utc=True)
    made = pd.to_datetime(frame["day"]).dt.tz_localize("UTC")
    frame["horizon_days"] = (end - made).dt.total_seconds() / 86_400
    return frame[list(SCORE_COLUMNS)]


def _log_score(p: pd.Series, o: pd.Series) -> pd.Series:
    q = np.clip(p, LOG_SCORE_EPS, 1.0 - LOG_SCORE_EPS)
    return o * np.log(q) + (1.0 - o) * np.log1p(-q)


def score(frame: pd.DataFrame) -> pd.DataFrame:
    """`core.scoring.score_predictions` as it was: per-row scores of p and of the price."""
    out = frame.copy()
    p = out["probability"].astype("float64")
    o = out["outcome"].astype("float64")
    price = out["market_price"].astype("float64")
    out["brier"] = np.square(p - o)
    out["log_score"] = _log_score(p, o)
    out["market_brier"] = np.square(price - o)
    out["market_log_score"] = _log_score(price, o)
    return out


def upsert_scores(conn: sa.Connection, scored: pd.DataFrame) -> int:
    if scored.empty:
        return 0
    frame = scored.rename(columns={"model": "model_slug"}).assign(scored_at=dt.datetime.now(dt.UTC))
    columns = [c.name for c in forecast_scores.columns if c.name != "id"]
    frame = frame[columns].astype(object).where(frame[columns].notna(), None)
    insert = dialect_insert(conn, forecast_scores)
    statement = insert.on_conflict_do_update(
        index_elements=["prediction_id"],
        set_={c: insert.excluded[c] for c in columns if c != "prediction_id"},
    ).returning(forecast_scores.c.id)  # RETURNING: batched, not one row a statement
    rows = frame.to_dict("records")
    for offset in range(0, len(rows), 5_000):
        conn.execute(statement, rows[offset : offset + 5_000]).all()
    return len(rows)


def pandas_score_resolutions(engine: sa.Engine, rescore_all: bool = False) -> tuple[int, int]:
    """The old asset body: read everything pending, score it, write it back.
    Returns (rows written, distinct markets)."""
    with engine.connect() as conn:
        pending = resolved_predictions(conn, rescore_all=rescore_all)
    scored = score(pending)
    with engine.begin() as conn:
        written = upsert_scores(conn, scored)
    return written, int(pending["market_id"].nunique()) if written else 0
