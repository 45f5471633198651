"""Checks on each (day, model) partition of `predictions`, evaluated in the same step."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from prediction_pipeline.services.prediction_checks import partition_health

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
    health = partition_health(conn, model, day, selected_ids)
    return [
        dg.AssetCheckResult(
            check_name="predictions_cover_selected_markets",
            passed=health.missing == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "selected": health.selected,
                "missing": health.missing,
                "coverage": health.coverage,
            },
        ),
        dg.AssetCheckResult(
            check_name="probabilities_in_range",
            passed=health.out_of_range == 0,
            metadata={"out_of_range": health.out_of_range},
        ),
        dg.AssetCheckResult(
            check_name="no_duplicate_predictions",
            passed=health.duplicates == 0,
            metadata={"duplicates": health.duplicates},
        ),
    ]
