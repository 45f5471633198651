"""Data-quality counts of one (day, model) partition of the batch, behind its asset checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store import predictions as prediction_store


@dataclass(frozen=True)
class PartitionHealth:
    selected: int  # markets selected for the partition
    missing: int  # selected markets without a batch prediction
    coverage: float  # share of the selected markets predicted (1.0 when none was selected)
    out_of_range: int  # stored probabilities outside [0, 1] (or null)
    duplicates: int  # markets with more than one batch prediction


def partition_health(
    conn: sa.Connection, model: str, day: dt.date, selected_ids: set[int]
) -> PartitionHealth:
    predicted = prediction_store.predicted_market_ids(conn, model, day) & selected_ids
    return PartitionHealth(
        selected=len(selected_ids),
        missing=len(selected_ids - predicted),
        coverage=len(predicted) / len(selected_ids) if selected_ids else 1.0,
        out_of_range=prediction_store.probabilities_out_of_range(conn, model, day),
        duplicates=prediction_store.batch_duplicates(conn, model, day),
    )
