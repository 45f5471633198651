"""Service functions for forecast scores and the leaderboard."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    forecast_scores,
    markets,
    model_leaderboard,
    predictions,
)

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


def excluded_prediction_counts(conn: sa.Connection) -> dict[str, int]:
    """Predictions not scored, and why: market closed but unresolved, or resolved void."""

    def count(*where) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(predictions.join(markets, markets.c.id == predictions.c.market_id))
            .where(*where)
        )
        return conn.scalar(query) or 0

    return {
        "excluded_closed_unresolved": count(markets.c.status == "closed"),
        "excluded_void": count(
            markets.c.status == "resolved",
            sa.or_(markets.c.resolved_outcome.is_(None), markets.c.resolved_outcome == "void"),
        ),
    }


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


def all_scores(conn: sa.Connection) -> pd.DataFrame:
    query = sa.select(
        forecast_scores.c.prediction_id,
        forecast_scores.c.model_slug.label("model"),
        forecast_scores.c.market_id,
        forecast_scores.c.category,
        forecast_scores.c.horizon_days,
        forecast_scores.c.probability,
        forecast_scores.c.market_price,
        forecast_scores.c.outcome,
        forecast_scores.c.brier,
        forecast_scores.c.log_score,
        forecast_scores.c.market_brier,
        forecast_scores.c.market_log_score,
    )
    return pd.DataFrame(conn.execute(query).all(), columns=list(query.selected_columns.keys()))


def replace_leaderboard(conn: sa.Connection, rows: pd.DataFrame) -> int:
    """The leaderboard is a derived table: replaced whole, in the caller's transaction."""
    conn.execute(sa.delete(model_leaderboard))
    if rows.empty:
        return 0
    columns = [c.name for c in model_leaderboard.columns if c.name != "id"]
    frame = rows.assign(computed_at=dt.datetime.now(dt.UTC))[columns]
    frame = frame.astype(object).where(frame.notna(), None)
    conn.execute(sa.insert(model_leaderboard), frame.to_dict("records"))
    return len(frame)


def read_leaderboard(conn: sa.Connection, dimension: str = "overall") -> pd.DataFrame:
    query = (
        sa.select(model_leaderboard)
        .where(model_leaderboard.c.dimension == dimension)
        .order_by(model_leaderboard.c.bucket, model_leaderboard.c.mean_brier)
    )
    return pd.DataFrame(conn.execute(query).all(), columns=list(query.selected_columns.keys()))
