"""Checks on each (day, model) partition of `predictions`, evaluated in the same step."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from prediction_pipeline.store import predictions as prediction_store

CHECK_SPECS = [
    dg.AssetCheckSpec(
        "predictions_cover_selected_markets",
        asset="predictions",
        description="Every selected market has a prediction (WARN: the rest are dead letters "
        "in prediction_failures, re-driven by re-materializing the partition).",
    ),
    dg.AssetCheckSpec(
        "probabilities_in_range",
        asset="predictions",
        blocking=True,
        description="Every stored probability lies within [0, 1].",
    ),
    dg.AssetCheckSpec(
        "no_duplicate_predictions",
        asset="predictions",
        blocking=True,
        description="At most one batch prediction per (market, model, day).",
    ),
]


def evaluate_checks(
    conn: sa.Connection, model: str, day: dt.date, selected_ids: set[int]
) -> list[dg.AssetCheckResult]:
    predicted = prediction_store.predicted_market_ids(conn, model, day) & selected_ids
    missing = len(selected_ids - predicted)
    coverage = len(predicted) / len(selected_ids) if selected_ids else 1.0
    out_of_range = prediction_store.probabilities_out_of_range(conn, model, day)
    duplicates = prediction_store.batch_duplicates(conn, model, day)
    return [
        dg.AssetCheckResult(
            check_name="predictions_cover_selected_markets",
            passed=missing == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"selected": len(selected_ids), "missing": missing, "coverage": coverage},
        ),
        dg.AssetCheckResult(
            check_name="probabilities_in_range",
            passed=out_of_range == 0,
            metadata={"out_of_range": out_of_range},
        ),
        dg.AssetCheckResult(
            check_name="no_duplicate_predictions",
            passed=duplicates == 0,
            metadata={"duplicates": duplicates},
        ),
    ]
