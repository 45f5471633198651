"""Service functions for forecast scores and the leaderboard."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from prediction_pipeline.core.leaderboard import SUM_COLUMNS
from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.core.scoring import LOG_SCORE_EPS
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    UTCDateTime,
    forecast_scores,
    markets,
    model_leaderboard,
    predictions,
)

# The leaderboard's group keys: a dimension's bucket column, as named in core.scoring.
LEADERBOARD_KEYS = {"overall": None, "category": "category", "horizon": "horizon_bucket"}


@dataclass(frozen=True)
class ScoringRun:
    """What one scoring statement wrote: rows and the distinct markets they belong to."""

    rows: int
    markets: int


def _clipped(p):
    """p clipped to [eps, 1 - eps], so that a certain miss costs ln(eps), not -inf."""
    return sa.case(
        (p < LOG_SCORE_EPS, LOG_SCORE_EPS),
        (p > 1.0 - LOG_SCORE_EPS, 1.0 - LOG_SCORE_EPS),
        else_=p,
    )


def _brier(p, outcome):
    return (p - outcome) * (p - outcome)


def _log_score(p, resolved_yes):
    """ln of the probability given to what happened (the rule in core.scoring); NULL
    when p is NULL (no market price)."""
    q = _clipped(p)
    return sa.case((resolved_yes, sa.func.ln(q)), else_=sa.func.ln(1.0 - q))


def _horizon_days(dialect: str):
    """Days from the prediction day (midnight UTC) to the market's end; NULL without an end.
    SQLite stores UTC datetimes as text (whole seconds are kept: strftime('%s'))."""
    end, made = markets.c.end_date, predictions.c.day
    if dialect == "postgresql":
        made_utc = sa.func.timezone("UTC", sa.cast(made, sa.DateTime))
        seconds = sa.extract("epoch", end) - sa.extract("epoch", made_utc)
    else:
        seconds = sa.func.strftime("%s", end) - sa.func.strftime("%s", made)
    return sa.cast(seconds, sa.Float) / 86_400.0


def register_sqlite_ln(dbapi_connection) -> None:
    """SQLite has ln() only when built with its math functions: register Python's
    (the same C log(), deterministic so SQLite may use it in indexes and constants)."""
    dbapi_connection.create_function("ln", 1, math.log, deterministic=True)


def _ensure_ln(conn: sa.Connection) -> None:
    if conn.dialect.name != "sqlite":
        return
    try:
        conn.exec_driver_sql("SELECT ln(1.0)")
    except sa.exc.OperationalError:  # "no such function: ln"
        register_sqlite_ln(conn.connection.dbapi_connection)


def score_resolutions(conn: sa.Connection, rescore_all: bool = False) -> ScoringRun:
    """Score every prediction on a market resolved YES or NO that has no score yet (all of
    them, rewritten, with `rescore_all`) in one INSERT ... SELECT ... ON CONFLICT: Brier and
    log score of the probability and of the market price it faced, outcome, category and
    horizon, computed by the database, so memory does not grow with the number of predictions.
    Closed-unresolved and void markets are left out. Idempotent per prediction."""
    _ensure_ln(conn)
    p, m = predictions.c, markets.c
    resolved_yes = m.resolved_outcome == "yes"
    outcome = sa.cast(sa.case((resolved_yes, 1.0), else_=0.0), sa.Float)
    scored_at = dt.datetime.now(dt.UTC)
    source = (
        sa.select(
            p.id,
            p.model_slug,
            p.market_id,
            m.category,
            _horizon_days(conn.dialect.name),
            p.probability,
            p.market_price,
            outcome,
            _brier(p.probability, outcome),
            _log_score(p.probability, resolved_yes),
            _brier(p.market_price, outcome),
            _log_score(p.market_price, resolved_yes),
            sa.literal(scored_at, UTCDateTime),
        )
        .join(markets, m.id == p.market_id)
        .where(m.status == MarketStatus.RESOLVED.value, m.resolved_outcome.in_(["yes", "no"]))
    )
    columns = [c.name for c in forecast_scores.columns if c.name != "id"]
    insert = dialect_insert(conn, forecast_scores).from_select(columns, source)
    if rescore_all:
        statement = insert.on_conflict_do_update(
            index_elements=["prediction_id"],
            set_={c: insert.excluded[c] for c in columns if c != "prediction_id"},
        )
    else:
        # Already scored: skipped by the unique index, not by a NOT EXISTS anti-join. On a
        # just-emptied table PostgreSQL's planner may run that anti-join as a nested loop
        # over a sequential scan of the very table the INSERT grows: quadratic (190 s for
        # 100,000 rows in benchmarks/scoring_scale.py).
        statement = insert.on_conflict_do_nothing(index_elements=["prediction_id"])
    rows = conn.execute(statement).rowcount
    if not rows:
        return ScoringRun(rows=0, markets=0)
    # The rows this statement wrote carry its `scored_at`.
    markets_scored = conn.scalar(
        sa.select(sa.func.count(sa.distinct(forecast_scores.c.market_id))).where(
            forecast_scores.c.scored_at == scored_at
        )
    )
    return ScoringRun(rows=rows, markets=markets_scored or 0)


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
        "excluded_closed_unresolved": count(markets.c.status == MarketStatus.CLOSED.value),
        "excluded_void": count(
            markets.c.status == MarketStatus.RESOLVED.value,
            sa.or_(markets.c.resolved_outcome.is_(None), markets.c.resolved_outcome == "void"),
        ),
    }


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
        .order_by(
            model_leaderboard.c.bucket, model_leaderboard.c.mean_brier, model_leaderboard.c.model
        )
    )
    return pd.DataFrame(conn.execute(query).all(), columns=list(query.selected_columns.keys()))


# --------------------------------------------------------------------------- leaderboard inputs
#
# The leaderboard is built from SQL aggregates per (model, market[, bucket]): memory grows
# with the number of markets, never with the number of predictions, and the bootstrap
# (core.leaderboard.leaderboard_from_sums) resamples exactly those per-market rows.


def _horizon_bucket_sql() -> sa.ColumnElement:
    """core.scoring.horizon_bucket in SQL: right-closed buckets, none for a missing horizon."""
    h = forecast_scores.c.horizon_days
    return sa.case(
        (h.is_(None), None),
        (h < 0, None),
        (h <= 7, "0-7d"),
        (h <= 30, "8-30d"),
        (h <= 90, "31-90d"),
        else_=">90d",
    )


def _bin_sql(bins: int) -> sa.ColumnElement:
    """core.scoring's equal-width bin of the probability: [i/bins, (i+1)/bins), 1.0 in the last."""
    p = forecast_scores.c.probability
    return sa.case(*[(p >= i / bins, i) for i in range(bins - 1, 0, -1)], else_=0)


def _resolved_at() -> sa.ColumnElement:
    # When the answer became knowable: trading stopped (closed_at), else the scheduled end.
    return sa.func.coalesce(markets.c.closed_at, markets.c.end_date)


def _known_answer(cutoffs: dict[str, dt.date]) -> sa.ColumnElement:
    """Rows whose market resolved before the model's knowledge cutoff: it may know them."""
    conditions = [
        sa.and_(
            forecast_scores.c.model_slug == slug,
            _resolved_at() < dt.datetime.combine(cutoff, dt.time(), tzinfo=dt.UTC),
        )
        for slug, cutoff in cutoffs.items()
    ]
    return sa.or_(*conditions) if conditions else sa.false()


def _scored_rows(key: str | None, cutoffs: dict[str, dt.date], *extra) -> sa.Subquery:
    """Scored rows the leaderboard may use (known answers left out), with the bucket key."""
    columns = [forecast_scores.c.model_slug.label("model"), forecast_scores.c.market_id]
    if key == "category":
        columns.append(forecast_scores.c.category.label("category"))
    elif key == "horizon_bucket":
        columns.append(_horizon_bucket_sql().label("horizon_bucket"))
    elif key is not None:
        raise ValueError(f"unknown leaderboard key {key!r}")
    return (
        sa.select(*columns, *extra)
        .select_from(forecast_scores.join(markets, markets.c.id == forecast_scores.c.market_id))
        .where(~_known_answer(cutoffs))
        .subquery()
    )


def _frame(conn: sa.Connection, query: sa.Select) -> pd.DataFrame:
    return pd.DataFrame(conn.execute(query).all(), columns=list(query.selected_columns.keys()))


# Rows fetched at a time when streaming the per-market sums (a few MB of Python objects).
PART_ROWS = 20_000


def leaderboard_market_sum_parts(
    conn: sa.Connection, key: str | None = None, cutoffs: dict[str, dt.date] | None = None
) -> Iterator[pd.DataFrame]:
    """Per (model, market[, key]) sums (core.leaderboard.market_sums, computed by the database),
    streamed in parts ordered by group, each group of (model[, key]) whole in one part: the
    caller holds one part at a time (a group's markets), not every model's markets at once."""
    fs = forecast_scores
    priced = fs.c.market_price.is_not(None)
    rows = _scored_rows(
        key,
        cutoffs or {},
        sa.case((priced, 1.0), else_=0.0).label("priced"),
        fs.c.brier,
        fs.c.log_score,
        sa.case((priced, fs.c.brier), else_=0.0).label("brier_priced"),
        sa.func.coalesce(fs.c.market_brier, 0.0).label("market_brier"),
        sa.func.coalesce(fs.c.market_log_score, 0.0).label("market_log_score"),
    )
    groups = [rows.c.model] + ([rows.c[key]] if key else [])
    query = (
        sa.select(
            *groups,
            rows.c.market_id,
            sa.func.count().label("n"),
            sa.func.sum(rows.c.priced).label("n_priced"),
            sa.func.sum(rows.c.brier).label("sum_brier"),
            sa.func.sum(rows.c.log_score).label("sum_log_score"),
            sa.func.sum(rows.c.brier_priced).label("sum_brier_priced"),
            sa.func.sum(rows.c.market_brier).label("sum_market_brier"),
            sa.func.sum(rows.c.market_log_score).label("sum_market_log_score"),
        )
        .group_by(*groups, rows.c.market_id)
        .order_by(*groups, rows.c.market_id)
    )
    columns = list(query.selected_columns.keys())
    width = len(groups)

    def frame(part: list) -> pd.DataFrame:
        out = pd.DataFrame(part, columns=columns)
        out[list(SUM_COLUMNS)] = out[list(SUM_COLUMNS)].astype("float64")
        return out

    # A server-side cursor on PostgreSQL; SQLite steps through its result anyway.
    result = conn.execute(query.execution_options(stream_results=True, yield_per=PART_ROWS))
    pending: list = []  # rows of the last group seen, which may go on in the next chunk
    for chunk in result.partitions():
        part = pending + list(chunk)
        last = tuple(part[-1][:width])
        cut = len(part)
        while cut and tuple(part[cut - 1][:width]) == last:
            cut -= 1
        if cut:
            yield frame(part[:cut])
        pending = part[cut:]
    if pending:
        yield frame(pending)


def leaderboard_calibration_sums(
    conn: sa.Connection,
    key: str | None = None,
    cutoffs: dict[str, dt.date] | None = None,
    bins: int = 10,
) -> pd.DataFrame:
    """Per (model[, key], bin): n, sum_p, sum_o (core.leaderboard.calibration_sums, in SQL)."""
    fs = forecast_scores
    rows = _scored_rows(
        key, cutoffs or {}, _bin_sql(bins).label("bin"), fs.c.probability, fs.c.outcome
    )
    keys = [rows.c.model] + ([rows.c[key]] if key else []) + [rows.c.bin]
    query = sa.select(
        *keys,
        sa.func.count().label("n"),
        sa.func.sum(rows.c.probability).label("sum_p"),
        sa.func.sum(rows.c.outcome).label("sum_o"),
    ).group_by(*keys)
    frame = _frame(conn, query)
    frame[["sum_p", "sum_o"]] = frame[["sum_p", "sum_o"]].astype("float64")
    return frame.astype({"n": "int64", "bin": "int64"})


def excluded_known_answers(conn: sa.Connection, cutoffs: dict[str, dt.date]) -> dict[str, int]:
    """Per model with a cutoff: scored predictions left out because the market resolved
    before the model's knowledge cutoff."""
    if not cutoffs:
        return {}
    query = (
        sa.select(forecast_scores.c.model_slug, sa.func.count())
        .select_from(forecast_scores.join(markets, markets.c.id == forecast_scores.c.market_id))
        .where(_known_answer(cutoffs))
        .group_by(forecast_scores.c.model_slug)
    )
    counts = dict(conn.execute(query).all())
    return {slug: int(counts.get(slug, 0)) for slug in sorted(cutoffs)}
