"""Data-quality checks on each day of `markets`, evaluated in the run that writes the day
(check specs on the asset: partitioned standalone checks are still a preview in 1.13)."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from prediction_pipeline.store import markets as market_store

CHECK_SPECS = [
    dg.AssetCheckSpec(
        "snapshot_prices_in_range",
        asset="markets",
        blocking=True,
        description="Every snapshot price of the day lies within [0, 1].",
    ),
    dg.AssetCheckSpec(
        "one_snapshot_per_market_and_day",
        asset="markets",
        description="No market has two snapshots for the day, and none observed lacks one.",
    ),
    dg.AssetCheckSpec(
        "every_market_has_a_question",
        asset="markets",
        description="No market row has an empty question.",
    ),
]


def evaluate_checks(conn: sa.Connection, day: dt.date) -> list[dg.AssetCheckResult]:
    out_of_range = market_store.snapshot_prices_out_of_range(conn, day)
    duplicates = market_store.duplicate_snapshots(conn, day)
    missing = market_store.markets_missing_snapshot(conn, day)
    empty = market_store.markets_without_question(conn)
    return [
        dg.AssetCheckResult(
            check_name="snapshot_prices_in_range",
            passed=out_of_range == 0,
            metadata={"out_of_range": out_of_range},
        ),
        dg.AssetCheckResult(
            check_name="one_snapshot_per_market_and_day",
            passed=duplicates == 0 and missing == 0,
            metadata={
                "snapshots": market_store.snapshot_count(conn, day),
                "duplicates": duplicates,
                "missing": missing,
            },
        ),
        dg.AssetCheckResult(
            check_name="every_market_has_a_question",
            passed=empty == 0,
            metadata={"empty_questions": empty},
        ),
    ]
