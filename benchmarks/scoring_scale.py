"""Scoring at scale: scores computed by the database (after) against the pandas path they
replaced (before), side by side in one run, then the leaderboard as the tree builds it.

For each engine (SQLite file in a temp dir; a throwaway PostgreSQL database):

1. a fresh app database, migrated to head, bulk-loaded with the deltas benchmark's synthetic
   data (`benchmarks.deltas_scale.build_dataset`: `--markets` markets, exactly
   `--predictions` predictions), every market resolved YES or NO (seeded, YES with its last
   price as the probability) with an end date 1-120 days after the snapshot day, so every
   prediction is scored (not measured);
2. before: `benchmarks.scoring_pandas.pandas_score_resolutions`, what the `forecast_scores`
   asset ran until issue 12: every pending prediction read into pandas at once, scored with
   numpy, upserted back with executemany;
3. after: `store.scoring.score_resolutions` (one INSERT ... SELECT ... ON CONFLICT, scores
   computed in SQL) on the emptied table; its rows are checked against the before path's (a
   fingerprint of sums, and the first `--compare-sample` rows value by value); then again
   with nothing new to score, and with `rescore_all` (every row rewritten);
4. the `model_leaderboard` asset as it is in this tree (materialized with an ephemeral
   Dagster instance), over the scored predictions: wall time and peak memory.

Each step runs alone in a spawned child process (see benchmarks/deltas_scale.py for how peak
RSS is read); base RSS includes the imports (Dagster included).

    .venv/bin/python -m benchmarks.scoring_scale [--predictions 1000000]
        [--engines sqlite,postgresql] [--no-leaderboard]

Prints a table per engine and writes benchmarks/results/scoring_scale.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa

from benchmarks import deltas_scale as base
from benchmarks.common import rounded, text_table
from benchmarks.scoring_pandas import pandas_score_resolutions
from prediction_pipeline.defs.scoring.assets import model_leaderboard
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.store import migrate
from prediction_pipeline.store import scoring as score_store
from prediction_pipeline.store.db import make_engine, safe_url
from prediction_pipeline.store.tables import forecast_scores

RESULTS_PATH = Path(__file__).parent / "results" / "scoring_scale.json"
SCORE_SUMS = ("brier", "log_score", "market_brier", "market_log_score", "horizon_days")


@dataclass
class Settings:
    predictions: int = 1_000_000
    markets: int = 20_000
    engines: tuple[str, ...] = ("sqlite", "postgresql")
    compare_sample: int = 100_000
    leaderboard: bool = True
    seed: int = 11
    pg_admin_url: str = base.PG_ADMIN_URL


# -- data ----------------------------------------------------------------------------------


def resolved_dataset(data: base.Dataset, dialect: str, seed: int) -> base.Dataset:
    """Every market resolved YES (with its last price's probability) or NO, ending 1-120
    days after the snapshot day."""
    rng = np.random.default_rng(seed + 1)
    m = len(data.markets)
    yes = rng.random(m) < data.markets["yes_price"].to_numpy()
    ends = [base.SNAPSHOT_DAY + dt.timedelta(days=int(k)) for k in rng.integers(1, 121, m)]
    markets = data.markets.assign(
        status="resolved",
        resolved_outcome=np.where(yes, "yes", "no"),
        yes_price=np.where(yes, 1.0, 0.0),
        end_date=[base._timestamp(dialect, day) for day in ends],
    )
    return replace(data, markets=markets)


def clear_scores(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("TRUNCATE forecast_scores"))
        else:
            conn.execute(sa.delete(forecast_scores))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE forecast_scores"))


def scores_fingerprint(engine: sa.Engine) -> dict[str, Any]:
    f = forecast_scores.c
    sums = [sa.func.sum(f[c]) for c in SCORE_SUMS]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(f.market_id)), *sums)
        ).one()
    return {
        "rows": row[0],
        "markets": row[1],
        **{f"sum_{c}": round(float(v or 0.0), 4) for c, v in zip(SCORE_SUMS, row[2:], strict=True)},
    }


def sample_scores(engine: sa.Engine, limit: int) -> pd.DataFrame:
    f = forecast_scores.c
    query = (
        sa.select(f.prediction_id, f.outcome, *(f[c] for c in SCORE_SUMS))
        .order_by(f.prediction_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).all(), columns=list(query.selected_columns.keys()))


def compare_scores(reference: pd.DataFrame, candidate: pd.DataFrame) -> dict[str, Any]:
    merged = reference.merge(candidate, on="prediction_id", suffixes=("", "_b"))
    diffs = {
        c: float((merged[c] - merged[f"{c}_b"]).abs().max() or 0.0)
        for c in ("outcome", *SCORE_SUMS)
    }
    return {
        "rows_compared": len(merged),
        "same_ids": len(merged) == len(reference) == len(candidate),
        "max_abs_diff": diffs,
    }


# -- measured steps (each alone in a spawned child, see deltas_scale.run_in_child) ----------


def step_before(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    rows, markets = pandas_score_resolutions(engine, rescore_all=params.get("rescore_all", False))
    return {"rows": rows, "markets": markets}


def step_after(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    with engine.begin() as conn:
        run = score_store.score_resolutions(conn, rescore_all=params.get("rescore_all", False))
    return {"rows": run.rows, "markets": run.markets}


def step_leaderboard(engine: sa.Engine, params: dict[str, Any]) -> dict[str, Any]:
    url = engine.url.render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        os.environ["PREDICTION_PIPELINE_DATA_DIR"] = tmp  # the calibration chart goes here
        result = dg.materialize([model_leaderboard], resources={"app_db": AppDatabase(url=url)})
    event = result.asset_materializations_for_node("model_leaderboard")[0]
    scored = event.metadata["scored_predictions"].value
    return {"rows": int(scored), "success": result.success}


def _step(name: str) -> str:
    return f"{__name__}:{name}"


def _measure(engine_name: str, label: str, step: str, url: str, params=None) -> base.Measurement:
    m = base.measurement(label, base.run_in_child(_step(step), url, params or {}))
    print(f"[{engine_name}] {label}: {m.rows:,} rows in {m.wall_s:.1f} s", flush=True)
    return m


def run_engine(name: str, settings: Settings, data: base.Dataset) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"engine": name}
    with base.fresh_database(name, settings) as url:
        engine = make_engine(url)
        try:
            out["database"] = safe_url(url) if name == "postgresql" else "sqlite (temp file)"
            out["versions"] = base.engine_versions(engine)
            migrate.upgrade(engine)
            t = time.perf_counter()
            out["load_s_by_table"] = base.bulk_load(
                engine, resolved_dataset(data, engine.dialect.name, settings.seed)
            )
            out["load_s"] = round(time.perf_counter() - t, 3)
            print(f"[{name}] loaded {data.shape()} in {out['load_s']:.1f} s", flush=True)

            before = _measure(name, "before: pandas, all pending at once", "step_before", url)
            reference = scores_fingerprint(engine)
            sample = sample_scores(engine, settings.compare_sample)
            clear_scores(engine)
            after = _measure(name, "after: SQL (score_resolutions)", "step_after", url)
            first = scores_fingerprint(engine)
            nothing_new = _measure(name, "after: again, nothing new", "step_after", url)
            rescore = _measure(name, "after: rescore_all", "step_after", url, {"rescore_all": True})
            out["same_as_before"] = {
                "fingerprint_equal": first == reference,
                "before": reference,
                "after": first,
                "sample": compare_scores(sample, sample_scores(engine, settings.compare_sample)),
                "after_rescore_equal": scores_fingerprint(engine) == first,
            }
            after.ratio = after.rows_per_s / before.rows_per_s if before.rows_per_s else None
            before.ratio = 1.0
            measured = [before, after, nothing_new, rescore]
            if settings.leaderboard:
                board = _measure(name, "leaderboard asset (this tree)", "step_leaderboard", url)
                measured.append(board)
            out["measurements"] = [asdict(m) for m in measured]
            out["speedup"] = after.ratio
        finally:
            engine.dispose()
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


# -- report --------------------------------------------------------------------------------


def table(measurements: list[dict[str, Any]]) -> str:
    header = ("step", "rows", "wall s", "rows/s", "peak RSS MB", "step +MB", "vs before")
    rows = [
        (
            m["approach"],
            f"{m['rows']:,}",
            f"{m['wall_s']:.2f}",
            f"{m['rows_per_s']:,.0f}",
            f"{m['peak_rss_mb']:.0f}",
            f"{m['peak_rss_mb'] - m['base_rss_mb']:.0f}",
            f"{m['ratio']:.1f}x" if m["ratio"] else "-",
        )
        for m in measurements
    ]
    return text_table(header, rows)


def print_engine(result: dict[str, Any]) -> None:
    version = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    print()
    print(f"== {result['engine']} ({version}); load {result['load_s']:.1f} s (not measured)")
    print(table(result["measurements"]))
    same = result["same_as_before"]
    sample = same["sample"]
    print(
        f"after = before: fingerprint (rows, markets, sums) {same['fingerprint_equal']}; "
        f"first {sample['rows_compared']:,} rows: same ids {sample['same_ids']}, max |diff| "
        f"{ {k: float(f'{v:.2g}') for k, v in sample['max_abs_diff'].items()} }; rescore "
        f"leaves the same values {same['after_rescore_equal']}"
    )
    print(f"after / before: {result['speedup']:.1f}x; engine total {result['total_s']} s")


def run(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = os.getloadavg()
    shape = {"predictions": settings.predictions, "markets": settings.markets}
    data = base.build_dataset(base.Settings(**shape, seed=settings.seed))
    engines = [run_engine(name, settings, data) for name in settings.engines]
    for result in engines:
        print_engine(result)
    return {
        "benchmark": "scoring_scale",
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", "-m", __spec__.name, *sys.argv[1:]]),
        "settings": {**asdict(settings), "pg_admin_url": safe_url(settings.pg_admin_url)},
        "data": data.shape(),
        "memory_measure": (
            "peak RSS (VmHWM) of a spawned child that runs only the step; base_rss_mb is its "
            "VmRSS before the step (interpreter + imports, Dagster included)"
        ),
        "before": "benchmarks/scoring_pandas.py: the forecast_scores asset's path until issue 12",
        "after": "store.scoring.score_resolutions: one INSERT ... SELECT ... ON CONFLICT",
        "leaderboard": "the model_leaderboard asset of this tree, dg.materialize in the child",
        "environment": base.environment(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "engines": {r["engine"]: r for r in engines},
        "total_wall_s": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    d = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scoring_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--predictions", type=int, default=d.predictions)
    parser.add_argument("--markets", type=int, default=d.markets)
    parser.add_argument("--engines", default=",".join(d.engines), help="sqlite,postgresql")
    parser.add_argument("--compare-sample", type=int, default=d.compare_sample)
    parser.add_argument("--no-leaderboard", action="store_true", help="skip the leaderboard")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--pg-admin-url", default=d.pg_admin_url)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results path")
    args = parser.parse_args(argv)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines or set(engines) - {"sqlite", "postgresql"}:
        parser.error("--engines takes sqlite and/or postgresql")
    if min(args.predictions, args.markets, args.compare_sample) < 1:
        parser.error("--predictions, --markets, --compare-sample must be >= 1")
    settings = Settings(
        predictions=args.predictions,
        markets=args.markets,
        engines=engines,
        compare_sample=args.compare_sample,
        leaderboard=not args.no_leaderboard,
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
