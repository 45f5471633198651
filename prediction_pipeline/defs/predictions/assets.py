"""The `predictions` asset: one partition per (day, model), idempotent per market."""

import asyncio
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd

from prediction_pipeline.defs import automation
from prediction_pipeline.defs.predictions.checks import CHECK_SPECS, evaluate_checks
from prediction_pipeline.defs.predictions.config import PredictionsConfig
from prediction_pipeline.partitions import model_day_partitions, parse_model_day_key
from prediction_pipeline.resources import AppDatabase, Forecasters
from prediction_pipeline.services.predict import PredictionReport, PredictionTask, run_predictions
from prediction_pipeline.services.prediction_batch import (
    BatchNotReady,
    BatchPlan,
    plan_batch,
    recent_predictions,
)

# A retry resumes: markets already stored are skipped, only the rest are asked again.
RETRY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@contextmanager
def _not_retried_when_invalid(what: str) -> Iterator[None]:
    """A ValueError while reading the partition key or the model's registry entry is bad input:
    every retry would fail the same way, so fail at once with the message first."""
    try:
        yield
    except dg.Failure:
        raise
    except ValueError as exc:
        raise dg.Failure(f"invalid {what}: {exc}", allow_retries=False) from exc


def _preview(engine, model: str, day: dt.date) -> str:
    with engine.connect() as conn:
        rows = recent_predictions(conn, model, day, limit=10)
    if not rows:
        return "_no predictions stored_"
    frame = pd.DataFrame(
        {
            "market": [r.source_id for r in rows],
            "question": [r.question[:70] for r in rows],
            "probability": [round(r.probability, 3) for r in rows],
            "market_price": [r.market_price for r in rows],
        }
    )
    return frame.to_markdown(index=False)


@dg.asset(
    partitions_def=model_day_partitions,
    # Each (day, model) partition reads the `markets` partition of its day.
    deps=[
        dg.AssetDep(
            "markets",
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="day"
            ),
        )
    ],
    automation_condition=automation.PREDICTIONS,
    group_name="predictions",
    kinds={"python", "sql"},
    retry_policy=RETRY,
    check_specs=CHECK_SPECS,
    # Across runs, one pool caps calls to the provider as a whole (dagster.yaml: pools).
    pool="openrouter",
    description=(
        "One prediction per selected market for the partition's model and day, stored "
        "idempotently in `predictions`; failures dead-lettered in `prediction_failures`."
    ),
)
def predictions(
    context: dg.AssetExecutionContext,
    config: PredictionsConfig,
    app_db: AppDatabase,
    forecasters: Forecasters,
) -> dg.MaterializeResult:
    with _not_retried_when_invalid("partition key"):
        day, model = parse_model_day_key(context.partition_key)
    engine = app_db.engine()
    plan = _plan(engine, config, model, day)
    spec, contexts = plan.spec, plan.contexts

    with _not_retried_when_invalid(f"registry entry of model {model!r}"):
        forecaster = forecasters.build(
            spec, show_market_price=config.show_market_price, limits_engine=engine, background=True
        )
    task = PredictionTask(
        model=model,
        day=day,
        contexts=contexts,
        web_search=spec.web_search if config.use_web_search is None else config.use_web_search,
        max_in_flight=spec.max_in_flight,
        max_cost_usd=spec.max_cost_usd if config.max_cost_usd is None else config.max_cost_usd,
        experiment_tag=config.experiment_tag,
        experiment_notes=config.experiment_notes,
        run_id=context.run_id,
    )
    report = asyncio.run(
        run_predictions(engine, forecaster, task, fatal_errors=forecasters.fatal_errors())
    )
    _fail_unless_done(context, config, task, report)

    with engine.connect() as conn:
        check_results = evaluate_checks(conn, model, day, {c.market_id for c in contexts})
    return dg.MaterializeResult(
        metadata={
            "model": model,
            "day": str(day),
            "web_search": task.web_search,
            **report.metadata(),
            "preview": dg.MetadataValue.md(_preview(engine, model, day)),
        },
        check_results=check_results,
    )


def _plan(engine, config: PredictionsConfig, model: str, day: dt.date) -> BatchPlan:
    """The markets to ask about; fails at once, without retries, if the day is not ready."""
    try:
        with engine.connect() as conn:
            return plan_batch(
                conn,
                model,
                day,
                top_markets_count=config.top_markets_count,
                target_days_from_now=config.target_days_from_now,
                end_date_range_hours=config.end_date_range_hours,
                exclude_categories=config.exclude_categories,
            )
    except BatchNotReady as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None


def _fail_unless_done(
    context: dg.AssetExecutionContext,
    config: PredictionsConfig,
    task: PredictionTask,
    report: PredictionReport,
) -> None:
    """Log the failures and the counts; fail a stopped batch or one with too many failures."""
    model, day = task.model, task.day
    for source_id, error in report.failures[:20]:
        context.log.warning(f"{model} {day} market {source_id} failed: {error}")
    summary = (
        f"{model} {day}: {report.predicted} predicted, {report.skipped_existing} already "
        f"stored, {report.skipped_budget} skipped for budget, {report.failed} failed, "
        f"${report.cost_usd:.4f}"
    )
    context.log.info(summary)
    if report.skipped_budget:
        context.log.warning(
            f"{model} {day}: spend cap {task.max_cost_usd} USD reached; "
            f"{report.skipped_budget} markets recorded as skipped for budget"
        )
    if report.fatal:
        raise dg.Failure(
            f"{model} {day}: stopped: {report.fatal}. {summary}",
            metadata=report.metadata(),
            allow_retries=False,
        )
    if report.failure_share > config.max_failure_share:
        # The op's RetryPolicy re-runs the partition; stored markets are skipped.
        raise dg.Failure(
            f"{model} {day}: {report.failed} of {report.attempted} markets failed "
            f"({report.failure_share:.0%} > {config.max_failure_share:.0%}). {summary}",
            metadata=report.metadata(),
        )
