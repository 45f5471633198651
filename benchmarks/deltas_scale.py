"""Delta snapshots at scale: the production path against a row-by-row port, per engine.

For each engine (SQLite file in a temp dir; a throwaway PostgreSQL database):

1. a fresh app database, migrated to head, bulk-loaded with synthetic data (set-wise: COPY on
   PostgreSQL, one executemany in one transaction on SQLite; timed separately, not measured):
   `--markets` markets with a snapshot for each of the 8 days up to the snapshot day, and
   exactly `--predictions` batch predictions over the 7 days before it, spread over as many
   models as needed (the two built-in baselines plus `bench/model-NN` rows, provider
   openrouter), one per (market, model, day);
2. production: `services.deltas.snapshot_deltas(engine, day, days_lookback=7)` with its default
   chunk size, in a spawned child process that runs only that step: wall time, rows, peak RSS
   (`VmHWM` of the child from /proc/self/status, read by the child at its end; its RSS before
   the step, interpreter + imports, is reported too) and the time spent inside the DBAPI.
   Not `ru_maxrss`: Linux carries the high-water mark of the pre-exec image (this parent,
   which holds the synthetic data set) into a spawned child. Then the same call again (rows
   already there): idempotency and the time of a re-run;
3. an instrumented copy of the production loop (same store/core functions, in a child) that
   splits the time into read / compute / write and the DBAPI time of each (optional);
4. row-by-row, what a naive port of the old cron route does: list the window's predictions,
   then for each one SELECT its market's price on the snapshot day, compute delta and
   direction in Python and INSERT ... ON CONFLICT DO UPDATE one row (one statement per
   prediction, committed every 1000 rows). Run on the first `--rowwise-sample` predictions
   (its rate does not depend on the sample size); its rows are checked against production's.
   The ratio is production rows/s over row-by-row rows/s;
5. optionally production again at other chunk sizes (`--chunk-sweep`) for the memory bound.

The deltas table is emptied before every measurement that must write the same rows.

    .venv/bin/python -m benchmarks.deltas_scale [--predictions 1000000]
        [--engines sqlite,postgresql] [--rowwise-sample 20000] [--chunk-sweep 10000,200000]

Prints a table per engine and writes benchmarks/results/deltas_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from benchmarks.common import git, peak_rss_mb, rounded, rss_now_mb, text_table
from prediction_pipeline.core.deltas import DISTANCE_TOLERANCE, compute_deltas
from prediction_pipeline.services.deltas import snapshot_deltas
from prediction_pipeline.store import deltas as delta_store
from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import dialect_insert, make_engine, safe_url
from prediction_pipeline.store.tables import prediction_deltas

RESULTS_PATH = Path(__file__).parent / "results" / "deltas_scale.json"
PG_ADMIN_URL = os.environ.get(
    "PREDICTION_PIPELINE_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
SNAPSHOT_DAY = dt.date(2026, 6, 8)
LOOKBACK_DAYS = 7
BASELINES = ("baseline/market", "baseline/momentum")  # registered by migration 0002
CATEGORIES = ("politics", "sports", "crypto", "economics", "science", "culture")
ROWWISE_COMMIT_EVERY = 1_000
MISSING_PRICE_THEN_SHARE = 0.01  # predictions stored without a market price -> "unknown"


@dataclass
class Settings:
    predictions: int = 1_000_000
    markets: int = 20_000
    engines: tuple[str, ...] = ("sqlite", "postgresql")
    rowwise_sample: int = 20_000
    chunk_size: int | None = None  # None: snapshot_deltas' own default
    chunk_sweep: tuple[int, ...] = ()
    breakdown: bool = True
    breakdown_predictions: int = 100_000  # 0: the whole window
    seed: int = 11
    pg_admin_url: str = PG_ADMIN_URL


@dataclass
class Measurement:
    """One row of a table: one approach on one engine, measured in a child process."""

    approach: str
    rows: int
    wall_s: float
    rows_per_s: float
    peak_rss_mb: float
    base_rss_mb: float
    sample: bool = False
    extrapolated_full_s: float | None = None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- synthetic data ------------------------------------------------------------------------


@dataclass
class Dataset:
    markets: pd.DataFrame
    snapshots: pd.DataFrame
    models: list[str]
    predictions: pd.DataFrame

    def shape(self) -> dict[str, Any]:
        return {
            "markets": len(self.markets),
            "snapshots": len(self.snapshots),
            "snapshot_days": LOOKBACK_DAYS + 1,
            "models": len(self.models),
            "predictions": len(self.predictions),
            "prediction_days": LOOKBACK_DAYS,
            "predictions_without_price_then": int(self.predictions["market_price"].isna().sum()),
        }


def models_needed(predictions: int, markets: int) -> int:
    return max(len(BASELINES), math.ceil(predictions / (markets * LOOKBACK_DAYS)))


def build_dataset(settings: Settings) -> Dataset:
    """Deterministic synthetic data: a logit random walk of prices per market, predictions
    near the price of their day. Predictions are ordered (day, model, market) as the daily
    partitions would insert them; each (day, model) slot covers an even share of the markets,
    so the total is exactly `settings.predictions` and (market, model, day) stays unique."""
    rng = np.random.default_rng(settings.seed)
    m, days = settings.markets, LOOKBACK_DAYS + 1
    market_ids = np.arange(1, m + 1)
    first_day = SNAPSHOT_DAY - dt.timedelta(days=LOOKBACK_DAYS)
    day_labels = [(first_day + dt.timedelta(days=d)).isoformat() for d in range(days)]

    logit = rng.normal(0.0, 1.2, m)[:, None] + np.cumsum(rng.normal(0.0, 0.25, (m, days)), axis=1)
    prices = np.round(1.0 / (1.0 + np.exp(-logit)), 4)  # (market, day) in [0, 1]

    markets = pd.DataFrame(
        {
            "id": market_ids,
            "source": "bench",
            "source_id": [f"bench-{i}" for i in market_ids],
            "question": [f"Will benchmark event {i} happen?" for i in market_ids],
            "category": np.array(CATEGORIES)[market_ids % len(CATEGORIES)],
            "tags": "[]",
            "volume": np.round(rng.lognormal(9.0, 1.5, m), 2),
            "liquidity": np.round(rng.lognormal(7.0, 1.2, m), 2),
            "outcomes": '["Yes", "No"]',
            "yes_price": prices[:, -1],
            "status": "open",
            "observed_day": day_labels[-1],
        }
    )
    snap_day = np.repeat(np.arange(days), m)  # ordered (day, market), as daily ingestion writes
    snap_market = np.tile(market_ids, days)
    snapshots = pd.DataFrame(
        {
            "id": np.arange(1, m * days + 1),
            "market_id": snap_market,
            "day": np.array(day_labels)[snap_day],
            "yes_price": prices[snap_market - 1, snap_day],
            "volume": np.round(rng.lognormal(9.0, 1.5, m * days), 2),
            "liquidity": np.round(rng.lognormal(7.0, 1.2, m * days), 2),
            "status": "open",
        }
    )

    n_models = models_needed(settings.predictions, m)
    models = [*BASELINES, *(f"bench/model-{k:02d}" for k in range(n_models - len(BASELINES)))]
    slots = LOOKBACK_DAYS * n_models
    per_slot, extra = divmod(settings.predictions, slots)
    counts = np.full(slots, per_slot) + (np.arange(slots) < extra)
    assert counts.max() <= m, "more predictions per (day, model) than markets"
    slot = np.repeat(np.arange(slots), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offset_in_slot = np.arange(settings.predictions) - starts[slot]
    market_index = (slot * 7_919 + offset_in_slot) % m  # each slot starts somewhere else
    day_index = slot // n_models
    price_then = prices[market_index, day_index]
    probability = np.round(np.clip(price_then + rng.normal(0.0, 0.12, len(slot)), 0.0, 1.0), 4)
    market_price = np.where(rng.random(len(slot)) < MISSING_PRICE_THEN_SHARE, np.nan, price_then)
    predictions = pd.DataFrame(
        {
            "id": np.arange(1, settings.predictions + 1),
            "market_id": market_index + 1,
            "model_slug": np.array(models)[slot % n_models],
            "day": np.array(day_labels)[day_index],
            "origin": "batch",
            "probability": probability,
            "confidence": np.round(rng.uniform(0.3, 0.9, len(slot)), 2),
            "market_price": market_price,
        }
    )
    return Dataset(markets=markets, snapshots=snapshots, models=models, predictions=predictions)


# -- databases -----------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(engine_name: str, settings: Settings) -> Iterator[str]:
    """A URL to an empty database, removed afterwards (also on error)."""
    if engine_name == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-deltas-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'app.db'}"
        return
    name = f"bench_deltas_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(settings.pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield (
            sa.engine.make_url(settings.pg_admin_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _timestamp(dialect: str, day: dt.date) -> str:
    # SQLAlchemy's SQLite DateTime storage format; PostgreSQL takes an ISO literal.
    if dialect == "sqlite":
        return f"{day.isoformat()} 12:00:00.000000"
    return f"{day.isoformat()} 12:00:00+00"


def bulk_load(engine: sa.Engine, data: Dataset) -> dict[str, float]:
    """Set-wise load of the synthetic data; returns seconds per table. No ORM, no per-row
    statements: COPY ... FROM STDIN (csv) on PostgreSQL, one executemany per table inside a
    single transaction on SQLite."""
    dialect = engine.dialect.name
    now = _timestamp(dialect, SNAPSHOT_DAY)
    markets = data.markets.assign(first_seen_at=now, updated_at=now)
    observed_at = {
        d: _timestamp(dialect, dt.date.fromisoformat(d)) for d in data.snapshots["day"].unique()
    }
    snapshots = data.snapshots.assign(observed_at=data.snapshots["day"].map(observed_at))
    predictions = data.predictions.assign(created_at=now)
    extra_models = pd.DataFrame(
        {
            "slug": [m for m in data.models if m not in BASELINES],
            "provider": "openrouter",
            "enabled": True if dialect == "postgresql" else 1,
            "web_search": False if dialect == "postgresql" else 0,
            "max_in_flight": 8,
            "requests_per_second": 20.0,
            "created_at": now,
            "updated_at": now,
        }
    )
    timings: dict[str, float] = {}
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table, frame in (
            ("models", extra_models),
            ("markets", markets),
            ("market_snapshots", snapshots),
            ("predictions", predictions),
        ):
            started = time.perf_counter()
            if frame.empty:
                timings[table] = 0.0
                continue
            columns = ", ".join(frame.columns)
            if dialect == "postgresql":
                buffer = io.StringIO()
                frame.to_csv(
                    buffer, index=False, header=False, na_rep="", quoting=csv.QUOTE_MINIMAL
                )
                buffer.seek(0)
                cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", buffer)
            else:
                marks = ", ".join("?" * len(frame.columns))
                values = frame.astype(object).where(frame.notna(), None)
                cursor.executemany(
                    f"INSERT INTO {table} ({columns}) VALUES ({marks})",
                    values.itertuples(index=False, name=None),
                )
            timings[table] = round(time.perf_counter() - started, 3)
        if dialect == "postgresql":
            for table in ("markets", "market_snapshots", "predictions"):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        raw.commit()
        # Statistics (and on PostgreSQL the visibility map) as a database in use would have
        # them: autovacuum / ANALYZE, not part of the measurement.
        started = time.perf_counter()
        if dialect == "postgresql":
            raw.set_isolation_level(0)  # VACUUM cannot run inside a transaction
            cursor.execute("VACUUM ANALYZE")
            raw.set_isolation_level(1)
        else:
            cursor.execute("ANALYZE")
            raw.commit()
        timings["analyze"] = round(time.perf_counter() - started, 3)
        cursor.close()
    finally:
        raw.close()
    return timings


def clear_deltas(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("TRUNCATE prediction_deltas"))
        else:
            conn.execute(sa.delete(prediction_deltas))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE prediction_deltas"))


def deltas_fingerprint(engine: sa.Engine) -> dict[str, Any]:
    """What the deltas table holds for the snapshot day, comparable across runs."""
    d = prediction_deltas.c
    with engine.connect() as conn:
        quality = delta_store.delta_quality(conn, SNAPSHOT_DAY)
        by_direction = dict(
            conn.execute(
                sa.select(d.direction, sa.func.count())
                .where(d.snapshot_day == SNAPSHOT_DAY)
                .group_by(d.direction)
                .order_by(d.direction)
            ).all()
        )
        sums = conn.execute(
            sa.select(
                sa.func.sum(d.delta), sa.func.sum(d.abs_delta), sa.func.sum(d.market_price)
            ).where(d.snapshot_day == SNAPSHOT_DAY)
        ).one()
    return {
        **quality,
        "by_direction": by_direction,
        "sum_delta": round(float(sums[0] or 0.0), 6),
        "sum_abs_delta": round(float(sums[1] or 0.0), 6),
        "sum_market_price": round(float(sums[2] or 0.0), 6),
    }


def sample_rows(engine: sa.Engine, limit: int) -> pd.DataFrame:
    d = prediction_deltas.c
    query = (
        sa.select(d.prediction_id, d.market_price, d.price_then, d.delta, d.abs_delta, d.direction)
        .where(d.snapshot_day == SNAPSHOT_DAY)
        .order_by(d.prediction_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).all(), columns=list(query.selected_columns.keys()))


def compare_rows(reference: pd.DataFrame, candidate: pd.DataFrame) -> dict[str, Any]:
    merged = reference.merge(candidate, on="prediction_id", how="outer", suffixes=("", "_b"))
    both = merged.dropna(subset=["delta", "delta_b"])
    return {
        "rows_reference": len(reference),
        "rows_candidate": len(candidate),
        "same_ids": len(both) == len(reference) == len(candidate),
        "max_abs_delta_diff": float((both["delta"] - both["delta_b"]).abs().max() or 0.0),
        "direction_mismatches": int((both["direction"] != both["direction_b"]).sum()),
    }


def engine_versions(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return {"postgresql": conn.scalar(sa.text("SHOW server_version"))}
        return {"sqlite": conn.scalar(sa.text("SELECT sqlite_version()"))}


# -- the chunk query, as production sends it -----------------------------------------------


@contextlib.contextmanager
def captured_statements(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def before(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def explain_chunk_query(engine: sa.Engine, chunk_size: int | None) -> dict[str, Any]:
    """The plan of the keyset chunk query that `iter_window_chunks` sends, for its first
    and second chunk (EXPLAIN ANALYZE on PostgreSQL, EXPLAIN QUERY PLAN on SQLite)."""
    kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
    with captured_statements(engine) as seen, engine.connect() as conn:
        chunks = delta_store.iter_window_chunks(conn, SNAPSHOT_DAY, LOOKBACK_DAYS, **kwargs)
        for _ in range(2):
            if next(chunks, None) is None:
                break
        chunks.close()
    out: dict[str, Any] = {}
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for label, (statement, parameters) in zip(
            ("first_chunk", "second_chunk"), seen, strict=False
        ):
            if engine.dialect.name == "postgresql":
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                plan = [row[0] for row in cursor.fetchall()]
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
                plan = [row[-1] for row in cursor.fetchall()]
            out[label] = {
                "sql": " ".join(statement.split()),
                "parameters": _jsonable(parameters),
                "plan": plan,
            }
        cursor.close()
        raw.rollback()
    finally:
        raw.close()
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# -- measured steps (each runs alone in a spawned child) -----------------------------------


class _DbapiTimer:
    """Seconds spent inside the DBAPI (driver + server) per statement kind."""

    def __init__(self, engine: sa.Engine) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        sa.event.listen(engine, "before_cursor_execute", self.before)
        sa.event.listen(engine, "after_cursor_execute", self.after)

    def before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        kind = statement.lstrip().split(None, 1)[0].upper()
        elapsed = time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())
        self.seconds[kind] = self.seconds.get(kind, 0.0) + elapsed
        self.calls[kind] = self.calls.get(kind, 0) + 1


def step_production(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    timer = _DbapiTimer(engine)
    kwargs = {} if params.get("chunk_size") is None else {"chunk_size": params["chunk_size"]}
    summary = snapshot_deltas(engine, SNAPSHOT_DAY, days_lookback=LOOKBACK_DAYS, **kwargs)
    return {
        "rows": summary.rows,
        "chunks": summary.chunks,
        "by_direction": dict(sorted(summary.by_direction.items())),
        "dbapi_s": {k: round(v, 3) for k, v in timer.seconds.items()},
        "dbapi_calls": timer.calls,
    }


def step_breakdown(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    """The loop of `snapshot_deltas`, stage by stage, with the same store/core functions.
    `convert_s` times (separately, then discarded) the frame -> list of dicts conversion
    that `upsert_deltas` does before executing, to split its Python cost from the DBAPI's."""
    timer = _DbapiTimer(engine)
    kwargs = {} if params.get("chunk_size") is None else {"chunk_size": params["chunk_size"]}
    stages = {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "convert_s": 0.0}
    read_by_chunk: list[float] = []
    rows = chunks_seen = 0
    with engine.connect() as reader:
        chunks = delta_store.iter_window_chunks(
            reader,
            SNAPSHOT_DAY,
            LOOKBACK_DAYS,
            max_predictions=params.get("max_predictions") or None,
            **kwargs,
        )
        while True:
            started = time.perf_counter()
            chunk = next(chunks, None)
            read_by_chunk.append(time.perf_counter() - started)
            stages["read_s"] += read_by_chunk[-1]
            if chunk is None:
                break
            started = time.perf_counter()
            prices = chunk[["market_id", "yes_price"]].drop_duplicates("market_id")
            deltas = compute_deltas(chunk, prices, SNAPSHOT_DAY)
            lookup = chunk.set_index("prediction_id")
            deltas["price_then"] = deltas["prediction_id"].map(lookup["market_price"])
            deltas["model"] = deltas["prediction_id"].map(lookup["model"])
            stages["compute_s"] += time.perf_counter() - started
            started = time.perf_counter()
            frame = deltas.drop(columns="model").assign(computed_at=dt.datetime.now(dt.UTC))
            frame.astype(object).where(frame.notna(), None).to_dict("records")
            stages["convert_s"] += time.perf_counter() - started
            started = time.perf_counter()
            with engine.begin() as writer:
                rows += delta_store.upsert_deltas(writer, deltas.drop(columns="model"))
            stages["write_s"] += time.perf_counter() - started
            chunks_seen += 1
    return {
        "rows": rows,
        "chunks": chunks_seen,
        **{k: round(v, 3) for k, v in stages.items()},
        "dbapi_s": {k: round(v, 3) for k, v in timer.seconds.items()},
        "dbapi_calls": timer.calls,
        "read_s_by_chunk": [round(v, 3) for v in read_by_chunk],
    }


ROWWISE_LIST = sa.text(
    "SELECT id, market_id, probability, market_price FROM predictions "
    "WHERE day >= :start AND day < :day ORDER BY id LIMIT :limit"
)
ROWWISE_PRICE = sa.text(
    "SELECT yes_price FROM market_snapshots "
    "WHERE market_id = :market_id AND day = :day AND status = 'open' AND yes_price IS NOT NULL"
)


def _direction(probability: float, price_then: float | None, price_now: float) -> str:
    if price_then is None:
        return "unknown"
    gap_now, gap_then = abs(price_now - probability), abs(price_then - probability)
    if abs(gap_now - gap_then) <= DISTANCE_TOLERANCE:
        return "flat"
    return "toward" if gap_now < gap_then else "away"


def step_rowwise(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    """The naive port: one SELECT and one INSERT ... ON CONFLICT per prediction, committed
    every ROWWISE_COMMIT_EVERY rows."""
    start = SNAPSHOT_DAY - dt.timedelta(days=LOOKBACK_DAYS)
    written = skipped = 0
    with engine.connect() as conn:
        started = time.perf_counter()
        todo = conn.execute(
            ROWWISE_LIST, {"start": start, "day": SNAPSHOT_DAY, "limit": params["limit"]}
        ).all()
        list_s = time.perf_counter() - started
        insert = dialect_insert(conn, prediction_deltas)
        upsert = insert.on_conflict_do_update(
            index_elements=["prediction_id", "snapshot_day"],
            set_={
                c: insert.excluded[c]
                for c in (
                    "market_price",
                    "price_then",
                    "delta",
                    "abs_delta",
                    "direction",
                    "computed_at",
                )
            },
        )
        for prediction_id, market_id, probability, price_then in todo:
            price_now = conn.scalar(ROWWISE_PRICE, {"market_id": market_id, "day": SNAPSHOT_DAY})
            if price_now is None:
                skipped += 1
                continue
            delta = price_now - probability
            conn.execute(
                upsert,
                {
                    "prediction_id": prediction_id,
                    "snapshot_day": SNAPSHOT_DAY,
                    "market_price": price_now,
                    "price_then": price_then,
                    "delta": delta,
                    "abs_delta": abs(delta),
                    "direction": _direction(probability, price_then, price_now),
                    "computed_at": dt.datetime.now(dt.UTC),
                },
            )
            written += 1
            if written % ROWWISE_COMMIT_EVERY == 0:
                conn.commit()
        conn.commit()
    return {
        "rows": written,
        "skipped_no_price": skipped,
        "listed": len(todo),
        "list_s": round(list_s, 3),
        "loop_s": round(time.perf_counter() - started - list_s, 3),
    }


STEPS: dict[str, Callable[[sa.Engine, dict[str, Any]], dict[str, Any]]] = {
    "production": step_production,
    "breakdown": step_breakdown,
    "rowwise": step_rowwise,
}


def _child(step: str, url: str, params: dict[str, Any], pipe) -> None:
    try:
        engine = make_engine(url)
        base = rss_now_mb()
        started = time.perf_counter()
        result = STEPS[step](engine, params)
        wall = time.perf_counter() - started
        engine.dispose()
        pipe.send(
            {
                "ok": True,
                "wall_s": wall,
                "base_rss_mb": base,
                "peak_rss_mb": peak_rss_mb(),
                **result,
            }
        )
    except BaseException:
        pipe.send({"ok": False, "error": traceback.format_exc()})
    finally:
        pipe.close()


def run_in_child(step: str, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one step in a fresh spawned interpreter, so its peak RSS is that step's alone."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(step, url, params or {}, sender), daemon=True)
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = {"ok": False, "error": "the child died without an answer"}
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
            process.join()
    if not result.pop("ok"):
        raise RuntimeError(f"{step} failed in its child process:\n{result['error']}")
    return result


# -- one engine ----------------------------------------------------------------------------


def _measurement(approach: str, result: dict[str, Any], **extra: Any) -> Measurement:
    rows, wall = result["rows"], result["wall_s"]
    return Measurement(
        approach=approach,
        rows=rows,
        wall_s=wall,
        rows_per_s=rows / wall if wall else 0.0,
        peak_rss_mb=result["peak_rss_mb"],
        base_rss_mb=result["base_rss_mb"],
        extra={
            k: v
            for k, v in result.items()
            if k not in {"rows", "wall_s", "peak_rss_mb", "base_rss_mb"}
        }
        | extra,
    )


def run_engine(name: str, settings: Settings, data: Dataset) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"engine": name}
    with fresh_database(name, settings) as url:
        engine = make_engine(url)
        try:
            out["database"] = safe_url(url) if name == "postgresql" else "sqlite (temp file)"
            out["versions"] = engine_versions(engine)
            t = time.perf_counter()
            migrate.upgrade(engine)
            out["migrate_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            out["load_s_by_table"] = bulk_load(engine, data)
            out["load_s"] = round(time.perf_counter() - t, 3)
            print(f"[{name}] loaded {data.shape()} in {out['load_s']:.1f} s", flush=True)
            out["chunk_query"] = explain_chunk_query(engine, settings.chunk_size)

            params = {"chunk_size": settings.chunk_size}
            clear_deltas(engine)
            prod = _measurement(
                "production (snapshot_deltas)", run_in_child("production", url, params)
            )
            first = deltas_fingerprint(engine)
            print(f"[{name}] production: {prod.rows} rows in {prod.wall_s:.1f} s", flush=True)
            again = _measurement(
                "production re-run (rows present)", run_in_child("production", url, params)
            )
            second = deltas_fingerprint(engine)
            print(f"[{name}] re-run: {again.rows} rows in {again.wall_s:.1f} s", flush=True)
            out["idempotency"] = {
                "after_first_run": first,
                "after_re_run": second,
                "rows_unchanged": first["rows"] == second["rows"] == prod.rows,
                "values_unchanged": first == second,
                "duplicates": second["duplicates"],
            }
            sample = min(settings.rowwise_sample, prod.rows)
            reference = sample_rows(engine, sample)

            if settings.breakdown:
                clear_deltas(engine)
                out["breakdown"] = run_in_child(
                    "breakdown", url, params | {"max_predictions": settings.breakdown_predictions}
                )
                print(f"[{name}] breakdown: {out['breakdown']['wall_s']:.1f} s", flush=True)

            clear_deltas(engine)
            row = _measurement(
                "row-by-row (sample)", run_in_child("rowwise", url, {"limit": sample})
            )
            # Its rate is the per-row loop's (the one listing query is left out, which
            # favours row-by-row); the full-set time adds the listing back once.
            row.sample = True
            row.rows_per_s = row.rows / row.extra["loop_s"] if row.extra["loop_s"] else 0.0
            row.extrapolated_full_s = (
                prod.rows / row.rows_per_s + row.extra["list_s"] if row.rows_per_s else None
            )
            row.extra["matches_production"] = compare_rows(reference, sample_rows(engine, sample))
            row.extra["commit_every"] = ROWWISE_COMMIT_EVERY
            print(f"[{name}] row-by-row: {row.rows} rows in {row.wall_s:.1f} s", flush=True)
            for m in (prod, again, row):
                m.ratio = prod.rows_per_s / m.rows_per_s if m.rows_per_s else None

            sweep = []
            for size in settings.chunk_sweep:
                clear_deltas(engine)
                m = _measurement(
                    f"production, chunk_size={size}",
                    run_in_child("production", url, {"chunk_size": size}),
                    chunk_size=size,
                )
                m.ratio = prod.rows_per_s / m.rows_per_s if m.rows_per_s else None
                sweep.append(m)
                print(f"[{name}] chunk {size}: {m.rows} rows in {m.wall_s:.1f} s", flush=True)
            out["measurements"] = [asdict(m) for m in (prod, again, row, *sweep)]
            out["ratio_production_over_rowwise"] = prod.rows_per_s / row.rows_per_s
        finally:
            engine.dispose()
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


# -- report --------------------------------------------------------------------------------


def table(measurements: list[dict[str, Any]]) -> str:
    header = ("approach", "rows", "wall s", "rows/s", "peak RSS MB", "step +MB", "ratio")
    rows = []
    for m in measurements:
        wall = f"{m['wall_s']:.2f}"
        if m["extrapolated_full_s"]:
            wall += f" (full: ~{m['extrapolated_full_s']:.0f})"
        rows.append(
            (
                m["approach"],
                f"{m['rows']:,}",
                wall,
                f"{m['rows_per_s']:,.0f}",
                f"{m['peak_rss_mb']:.0f}",
                f"{m['peak_rss_mb'] - m['base_rss_mb']:.0f}",
                f"{m['ratio']:.1f}x" if m["ratio"] else "-",
            )
        )
    return text_table(header, rows)


def print_engine(result: dict[str, Any]) -> None:
    version = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    print()
    print(f"== {result['engine']} ({version}); load {result['load_s']:.1f} s (not measured)")
    print(table(result["measurements"]))
    idem = result["idempotency"]
    match = result["measurements"][2]["extra"]["matches_production"]
    print(
        f"re-run: rows unchanged {idem['rows_unchanged']}, values unchanged "
        f"{idem['values_unchanged']}, duplicates {idem['duplicates']}; row-by-row rows match "
        f"production: ids {match['same_ids']}, max |delta diff| {match['max_abs_delta_diff']:.2g}, "
        f"direction mismatches {match['direction_mismatches']}"
    )
    prod = result["measurements"][0]["extra"]
    print(
        f"production, inside the DBAPI (driver + server): {prod['dbapi_s']} s over "
        f"{prod['dbapi_calls']} calls ({prod['chunks']} chunks)"
    )
    if "breakdown" in result:
        b = result["breakdown"]
        print(
            f"production stages (instrumented copy of its loop, {b['rows']:,} rows in "
            f"{b['chunks']} chunks, {b['wall_s']:.1f} s): read {b['read_s']:.1f} s, "
            f"compute {b['compute_s']:.1f} s, write {b['write_s']:.1f} s (frame->dicts alone "
            f"{b['convert_s']:.1f} s); inside the DBAPI: {b['dbapi_s']} "
            f"over {b['dbapi_calls']} calls"
        )
    print(
        f"production / row-by-row: {result['ratio_production_over_rowwise']:.1f}x; "
        f"engine total {result['total_s']} s"
    )


def environment() -> dict[str, Any]:
    import psycopg2

    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty_paths": (
            git("status", "--porcelain", "--", "prediction_pipeline") or ""
        ).splitlines(),
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite_library": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
    }


def run(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = os.getloadavg()
    t = time.perf_counter()
    data = build_dataset(settings)
    generate_s = time.perf_counter() - t
    engines = [run_engine(name, settings, data) for name in settings.engines]
    for result in engines:
        print_engine(result)
    return {
        "benchmark": "deltas_scale",
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", "-m", "benchmarks.deltas_scale", *sys.argv[1:]]),
        "settings": {**asdict(settings), "pg_admin_url": safe_url(settings.pg_admin_url)},
        "snapshot_day": SNAPSHOT_DAY.isoformat(),
        "days_lookback": LOOKBACK_DAYS,
        "data": data.shape(),
        "generate_s": round(generate_s, 3),
        "memory_measure": (
            "peak RSS of a spawned child process that runs only the measured step: VmHWM "
            "from /proc/self/status read by the child at its end (not ru_maxrss, which Linux "
            "carries over from the pre-exec parent image); base_rss_mb is its VmRSS before the "
            "step (interpreter + imports + engine), step +MB the difference"
        ),
        "rowwise": (
            f"one SELECT of the snapshot price and one INSERT ... ON CONFLICT DO UPDATE per "
            f"prediction (SQLAlchemy Core, compiled-statement cache), commit every "
            f"{ROWWISE_COMMIT_EVERY} rows; run on the first rowwise_sample predictions by id; "
            "rows_per_s is the per-row loop's (the one listing query, extra.list_s, left out), "
            "extrapolated_full_s = predictions / rows_per_s + list_s"
        ),
        "ratio": "production rows/s divided by row-by-row rows/s",
        "environment": environment(),
        # Other processes on the machine skew every figure; the 1/5/15-minute load averages.
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "engines": {r["engine"]: r for r in engines},
        "total_wall_s": round(time.perf_counter() - started, 1),
    }


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    d = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.deltas_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--predictions", type=int, default=d.predictions)
    parser.add_argument("--markets", type=int, default=d.markets)
    parser.add_argument("--engines", default=",".join(d.engines), help="sqlite,postgresql")
    parser.add_argument("--rowwise-sample", type=int, default=d.rowwise_sample)
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="production chunk size (default: its own)"
    )
    parser.add_argument(
        "--chunk-sweep",
        type=_int_list,
        default=d.chunk_sweep,
        help="extra production runs at these chunk sizes, e.g. 10000,200000",
    )
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the instrumented stage breakdown run"
    )
    parser.add_argument(
        "--breakdown-predictions",
        type=int,
        default=d.breakdown_predictions,
        help="predictions the instrumented breakdown run covers (0: all)",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--pg-admin-url", default=d.pg_admin_url)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results path")
    args = parser.parse_args(argv)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines or set(engines) - {"sqlite", "postgresql"}:
        parser.error("--engines takes sqlite and/or postgresql")
    if min(args.predictions, args.markets, args.rowwise_sample, args.chunk_size or 1) < 1:
        parser.error("--predictions, --markets, --rowwise-sample, --chunk-size must be >= 1")
    settings = Settings(
        predictions=args.predictions,
        markets=args.markets,
        engines=engines,
        rowwise_sample=args.rowwise_sample,
        chunk_size=args.chunk_size,
        chunk_sweep=args.chunk_sweep,
        breakdown=not args.no_breakdown,
        breakdown_predictions=max(0, args.breakdown_predictions),
        seed=args.seed,
        pg_admin_url=args.pg_admin_url,
    )
    return settings, args.output


def main(argv: list[str] | None = None) -> int:
    settings, output = parse_args(argv)
    result = rounded(run(settings))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(
        f"\nload average (1/5/15 min) before {result['load_average_before']}, after "
        f"{result['load_average_after']} on {result['environment']['cpus']} CPUs; "
        f"total {result['total_wall_s']} s"
    )
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
