"""`prediction_deltas`: how each recent prediction stands against the market, per day."""

import datetime as dt

import dagster as dg
import pandas as pd
from pydantic import Field

from prediction_pipeline.core.deltas import Mover
from prediction_pipeline.defs import automation
from prediction_pipeline.defs.run_config import RunConfig
from prediction_pipeline.partitions import daily_partitions
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.services.deltas import InvalidPriceError, delta_quality, snapshot_deltas


class DeltasConfig(RunConfig):
    days_lookback: int = Field(default=7, ge=1, description="Predictions made this many days back.")
    max_predictions: int | None = Field(default=None, ge=1, description="Cap, oldest id first.")
    include_closed_markets: bool = False
    exclude_categories: list[str] = Field(default_factory=list)
    chunk_size: int = Field(
        default=200_000, ge=100, description="Predictions per upsert statement (transaction)."
    )


CHECK_SPECS = [
    dg.AssetCheckSpec(
        "one_delta_per_prediction_and_day",
        asset="prediction_deltas",
        blocking=True,
        description="At most one delta row per (prediction, snapshot day).",
    ),
    dg.AssetCheckSpec(
        "deltas_within_bounds",
        asset="prediction_deltas",
        description="Every delta lies within [-1, 1].",
    ),
]


@dg.asset(
    partitions_def=daily_partitions,
    # The day's markets (prices), and every model's predictions of the day: a delta row is
    # written for predictions up to `days_lookback` days back, but the day's own predictions
    # are the ones that change when this partition is due.
    deps=[
        "markets",
        dg.AssetDep(
            "predictions",
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="day"
            ),
        ),
    ],
    automation_condition=automation.DELTAS,
    group_name="evaluation",
    kinds={"sql"},
    check_specs=CHECK_SPECS,
    retry_policy=dg.RetryPolicy(
        max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
    description=(
        "For each prediction made within `days_lookback` days before the partition day: the "
        "market price that day, delta (price - probability), |delta|, and whether the market "
        "moved toward or away from the prediction. Computed by the database, one upsert per "
        "chunk of predictions. Idempotent per (prediction, day)."
    ),
)
def prediction_deltas(
    context: dg.AssetExecutionContext, config: DeltasConfig, app_db: AppDatabase
) -> dg.MaterializeResult:
    day = dt.date.fromisoformat(context.partition_key)
    engine = app_db.engine()
    try:
        summary = snapshot_deltas(
            engine,
            day,
            days_lookback=config.days_lookback,
            max_predictions=config.max_predictions,
            include_closed_markets=config.include_closed_markets,
            exclude_categories=config.exclude_categories,
            chunk_size=config.chunk_size,
        )
    except InvalidPriceError as error:  # bad data: a retry cannot fix it
        raise dg.Failure(str(error), allow_retries=False) from error
    context.log.info(f"{day}: {summary.rows} deltas in {summary.statements} statements")
    quality = delta_quality(engine, day)
    return dg.MaterializeResult(
        metadata={
            "deltas": summary.rows,
            "statements": summary.statements,
            **{f"direction_{k}": v for k, v in summary.by_direction.items()},
            "mean_abs_delta_by_model": dg.MetadataValue.json(summary.mean_abs_delta_by_model),
            "largest_movers": dg.MetadataValue.md(_movers_table(summary.movers)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="one_delta_per_prediction_and_day",
                passed=quality["duplicates"] == 0,
                metadata={"duplicates": quality["duplicates"], "rows": quality["rows"]},
            ),
            dg.AssetCheckResult(
                check_name="deltas_within_bounds",
                passed=quality["out_of_range"] == 0,
                metadata={"out_of_range": quality["out_of_range"]},
            ),
        ],
    )


def _movers_table(movers: list[Mover]) -> str:
    if not movers:
        return "_no deltas_"
    table = pd.DataFrame(
        [
            {
                "model": m.model,
                "source_id": m.source_id,
                "question": m.question[:60],
                "market_price": m.market_price,
                "delta": m.delta,
                "direction": m.direction,
            }
            for m in movers
        ]
    )
    return table.round(3).to_markdown(index=False)
