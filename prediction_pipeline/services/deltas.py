"""Delta snapshots for one day: chunked read, set-wise compute, bulk write, bounded memory."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from prediction_pipeline.core.deltas import compute_deltas
from prediction_pipeline.store import deltas as delta_store


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


def snapshot_deltas(
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
        chunks = delta_store.iter_window_chunks(
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
                summary.rows += delta_store.upsert_deltas(writer, deltas.drop(columns="model"))
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
