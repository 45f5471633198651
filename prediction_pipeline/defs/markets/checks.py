"""Data-quality checks on each day of `markets`, evaluated in the run that writes the day
(check specs on the asset: partitioned standalone checks are still a preview in 1.13)."""

import dagster as dg

from prediction_pipeline.services.markets import MarketDayQuality

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


def check_results(quality: MarketDayQuality) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name="snapshot_prices_in_range",
            passed=quality.out_of_range == 0,
            metadata={"out_of_range": quality.out_of_range},
        ),
        dg.AssetCheckResult(
            check_name="one_snapshot_per_market_and_day",
            passed=quality.duplicates == 0 and quality.missing == 0,
            metadata={
                "snapshots": quality.snapshots,
                "duplicates": quality.duplicates,
                "missing": quality.missing,
            },
        ),
        dg.AssetCheckResult(
            check_name="every_market_has_a_question",
            passed=quality.empty_questions == 0,
            metadata={"empty_questions": quality.empty_questions},
        ),
    ]
