"""Delta snapshots at scale: the set-based SQL path (after) against the chunked pandas path
it replaced (before), side by side in one run, per engine.

For each engine (SQLite file in a temp dir; a throwaway PostgreSQL database):

1. a fresh app database, migrated to head, bulk-loaded with synthetic data (set-wise: COPY on
   PostgreSQL, one executemany in one transaction on SQLite; timed separately, not measured):
   `--markets` markets with a snapshot for each of the 8 days up to the snapshot day, and
   exactly `--predictions` batch predictions over the 7 days before it, spread over as many
   models as needed (the two built-in baselines plus `bench/model-NN` rows, provider
   openrouter), one per (market, model, day);
2. before: `benchmarks.deltas_chunked.chunked_snapshot_deltas` (what production ran until
   issue 12: 50,000-row chunks through pandas), then again with its rows present;
3. after: `services.deltas.snapshot_deltas(engine, day, days_lookback=7)` (one
   INSERT ... SELECT ... ON CONFLICT per chunk, summary by SQL aggregates) with its default
   chunk size, then again with its rows present (idempotency and the time of a re-run).
   Its rows are checked against the before path's: a fingerprint of the whole day (rows,
   counts by direction, duplicates, sums of delta, |delta| and price) and the first
   `--compare-sample` rows by prediction id value by value;
4. optionally the after path at other chunk sizes (`--chunk-sweep`): memory stays flat.

Each measured step runs alone in a spawned child process: wall time, rows, peak RSS (`VmHWM`
of the child from /proc/self/status, read by the child at its end; its RSS before the step,
interpreter + imports, is reported too) and the time spent inside the DBAPI. Not
`ru_maxrss`: Linux carries the high-water mark of the pre-exec image (this parent, which
holds the synthetic data set) into a spawned child. The deltas table is emptied before every
measurement that must write the rows afresh.

    .venv/bin/python -m benchmarks.deltas_scale [--predictions 1000000]
        [--engines sqlite,postgresql] [--chunk-size N] [--chunk-sweep 50000,1000000]

Prints a table per engine and writes benchmarks/results/deltas_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import importlib
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
from benchmarks.deltas_chunked import chunked_snapshot_deltas
from prediction_pipeline.services.deltas import snapshot_deltas
from prediction_pipeline.store import deltas as delta_store
from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import make_engine, safe_url
from prediction_pipeline.store.tables import prediction_deltas

RESULTS_PATH = Path(__file__).parent / "results" / "deltas_scale.json"
PG_ADMIN_URL = os.environ.get(
    "PREDICTION_PIPELINE_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
SNAPSHOT_DAY = dt.date(2026, 6, 8)
LOOKBACK_DAYS = 7
BASELINES = ("baseline/market", "baseline/momentum")  # registered by migration 0002
CATEGORIES = ("politics", "sports", "crypto", "economics", "science", "culture")
MISSING_PRICE_THEN_SHARE = 0.01  # predictions stored without a market price -> "unknown"


@dataclass
class Settings:
    predictions: int = 1_000_000
    markets: int = 20_000
    engines: tuple[str, ...] = ("sqlite", "postgresql")
    compare_sample: int = 100_000
    chunk_size: int | None = None  # None: snapshot_deltas' own default
    chunk_sweep: tuple[int, ...] = ()
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


def _step_result(summary: Any, timer: _DbapiTimer, statements: int) -> dict[str, Any]:
    return {
        "rows": summary.rows,
        "statements": statements,
        "by_direction": dict(sorted(summary.by_direction.items())),
        "dbapi_s": {k: round(v, 3) for k, v in timer.seconds.items()},
        "dbapi_calls": timer.calls,
    }


def step_sql(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    """After: production, `services.deltas.snapshot_deltas` (set-based SQL)."""
    timer = _DbapiTimer(engine)
    kwargs = {} if params.get("chunk_size") is None else {"chunk_size": params["chunk_size"]}
    summary = snapshot_deltas(engine, SNAPSHOT_DAY, days_lookback=LOOKBACK_DAYS, **kwargs)
    return _step_result(summary, timer, summary.statements)


def step_chunked(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    """Before: the chunked pandas path production used until issue 12 (50,000-row chunks)."""
    timer = _DbapiTimer(engine)
    summary = chunked_snapshot_deltas(engine, SNAPSHOT_DAY, days_lookback=LOOKBACK_DAYS)
    return _step_result(summary, timer, summary.chunks)


STEPS: dict[str, Callable[[sa.Engine, dict[str, Any]], dict[str, Any]]] = {
    "sql": step_sql,
    "chunked": step_chunked,
}


def _child(step: str, url: str, params: dict[str, Any], pipe) -> None:
    try:
        module, name = step.split(":")
        function = getattr(importlib.import_module(module), name)
        engine = make_engine(url)
        base = rss_now_mb()
        started = time.perf_counter()
        result = function(engine, params)
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
    """Run one step in a fresh spawned interpreter, so its peak RSS is that step's alone.
    `step` names a key of STEPS, or any "module:function" taking (engine, params)."""
    ref = step if ":" in step else f"{__name__}:{STEPS[step].__name__}"
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(ref, url, params or {}, sender), daemon=True)
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


def measurement(approach: str, result: dict[str, Any], **extra: Any) -> Measurement:
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


def _measure(name: str, label: str, step: str, url: str, params: dict[str, Any]) -> Measurement:
    m = measurement(label, run_in_child(step, url, params))
    print(f"[{name}] {label}: {m.rows:,} rows in {m.wall_s:.1f} s", flush=True)
    return m


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
            params = {"chunk_size": settings.chunk_size}

            # Before: the chunked pandas path, then again with its rows present.
            clear_deltas(engine)
            before = _measure(name, "before: chunked pandas", "chunked", url, {})
            reference = deltas_fingerprint(engine)
            sample = sample_rows(engine, settings.compare_sample)
            before_again = _measure(name, "before: re-run (rows present)", "chunked", url, {})

            # After: the set-based SQL path, the same way.
            clear_deltas(engine)
            after = _measure(name, "after: SQL (snapshot_deltas)", "sql", url, params)
            first = deltas_fingerprint(engine)
            after_again = _measure(name, "after: re-run (rows present)", "sql", url, params)
            second = deltas_fingerprint(engine)
            out["same_as_before"] = {
                "fingerprint_equal": first == reference,
                "before": reference,
                "after": first,
                "sample": compare_rows(sample, sample_rows(engine, settings.compare_sample)),
            }
            out["idempotency"] = {
                "rows_unchanged": first["rows"] == second["rows"] == after.rows,
                "values_unchanged": first == second,
                "duplicates": second["duplicates"],
            }
            for m, base in ((before, before), (after, before), (before_again, before_again)):
                m.ratio = m.rows_per_s / base.rows_per_s if base.rows_per_s else None
            after_again.ratio = (
                after_again.rows_per_s / before_again.rows_per_s
                if before_again.rows_per_s
                else None
            )

            sweep = []
            for size in settings.chunk_sweep:
                clear_deltas(engine)
                m = _measure(name, f"after, chunk_size={size}", "sql", url, {"chunk_size": size})
                m.extra["chunk_size"] = size
                m.ratio = m.rows_per_s / before.rows_per_s if before.rows_per_s else None
                sweep.append(m)
            measured = (before, after, before_again, after_again, *sweep)
            out["measurements"] = [asdict(m) for m in measured]
            out["speedup"] = after.rows_per_s / before.rows_per_s
            out["speedup_re_run"] = after_again.ratio
        finally:
            engine.dispose()
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


# -- report --------------------------------------------------------------------------------


def table(measurements: list[dict[str, Any]]) -> str:
    header = ("approach", "rows", "statements", "wall s", "rows/s", "peak RSS MB", "step +MB")
    header += ("vs before",)
    rows = []
    for m in measurements:
        rows.append(
            (
                m["approach"],
                f"{m['rows']:,}",
                str(m["extra"]["statements"]),
                f"{m['wall_s']:.2f}",
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
    idem, same = result["idempotency"], result["same_as_before"]
    sample = same["sample"]
    print(
        f"after = before: fingerprint (rows, directions, sums) {same['fingerprint_equal']}; "
        f"first {sample['rows_reference']:,} rows by id: same ids {sample['same_ids']}, "
        f"max |delta diff| {sample['max_abs_delta_diff']:.2g}, direction mismatches "
        f"{sample['direction_mismatches']}"
    )
    print(
        f"re-run: rows unchanged {idem['rows_unchanged']}, values unchanged "
        f"{idem['values_unchanged']}, duplicates {idem['duplicates']}"
    )
    after = result["measurements"][1]["extra"]
    print(
        f"after, inside the DBAPI (driver + server): {after['dbapi_s']} s over "
        f"{after['dbapi_calls']} calls"
    )
    print(
        f"after / before: {result['speedup']:.1f}x (re-run {result['speedup_re_run']:.1f}x); "
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
        "before": (
            "benchmarks/deltas_chunked.py: the chunked pandas path production used until "
            "issue 12 (50,000-row keyset chunks read into pandas, compute_deltas, COPY + "
            "upsert on PostgreSQL, executemany upsert on SQLite)"
        ),
        "after": "services.deltas.snapshot_deltas: one INSERT ... SELECT ... ON CONFLICT per chunk",
        "ratio": "rows/s divided by the before path's rows/s (re-run: by its re-run's)",
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
    parser.add_argument(
        "--compare-sample",
        type=int,
        default=d.compare_sample,
        help="rows (first by prediction id) compared value by value, before vs after",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="production chunk size (default: its own)"
    )
    parser.add_argument(
        "--chunk-sweep",
        type=_int_list,
        default=d.chunk_sweep,
        help="extra production runs at these chunk sizes, e.g. 10000,200000",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--pg-admin-url", default=d.pg_admin_url)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results path")
    args = parser.parse_args(argv)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines or set(engines) - {"sqlite", "postgresql"}:
        parser.error("--engines takes sqlite and/or postgresql")
    if min(args.predictions, args.markets, args.compare_sample, args.chunk_size or 1) < 1:
        parser.error("--predictions, --markets, --compare-sample, --chunk-size must be >= 1")
    settings = Settings(
        predictions=args.predictions,
        markets=args.markets,
        engines=engines,
        compare_sample=args.compare_sample,
        chunk_size=args.chunk_size,
        chunk_sweep=args.chunk_sweep,
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
