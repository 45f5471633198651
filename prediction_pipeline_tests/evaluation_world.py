"""A small world for deltas and scoring tests: synthetic markets over three weeks and
baseline predictions over the first week, on markets that end (and resolve) inside it."""

import asyncio
import datetime as dt

import sqlalchemy as sa

from prediction_pipeline.core.selection import select_markets
from prediction_pipeline.core.synthetic import SyntheticUniverse
from prediction_pipeline.services.forecasters import BuiltinForecaster
from prediction_pipeline.services.predict import PredictionTask, market_contexts, run_predictions
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import predictions as prediction_store

START = dt.date(2026, 9, 1)
MODELS = ("baseline/market", "baseline/momentum")


def build_world(engine: sa.Engine, days: int = 21, predict_days: int = 7, size: int = 150) -> None:
    universe = SyntheticUniverse(size=size)
    held: set[str] = set()
    for offset in range(days):
        day = START + dt.timedelta(days=offset)
        active = universe.active_markets(day)
        lookup = universe.lookup(sorted(held - {m.source_id for m in active}), day)
        held |= {m.source_id for m in active}
        with engine.begin() as conn:
            market_store.ingest_markets(conn, active + lookup, day)
        if offset >= predict_days:
            continue
        with engine.connect() as conn:
            chosen = select_markets(
                prediction_store.candidate_markets(conn, day),
                day,
                top_markets_count=25,
                target_days_from_now=0,
                end_date_range_hours=24 * 12,
            )
            contexts = market_contexts(conn, chosen, day)
        for model in MODELS:
            task = PredictionTask(model=model, day=day, contexts=contexts)
            report = asyncio.run(run_predictions(engine, BuiltinForecaster(model), task))
            assert report.failed == 0
