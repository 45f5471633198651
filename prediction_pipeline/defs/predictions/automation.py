"""The daily schedule (one run per enabled model for today) and the sensor that keeps the
`models` dynamic partitions in step with the registry."""

import dagster as dg

from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.partitions import model_day_partitions, model_partitions
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.store import models as model_store

predictions_job = dg.define_asset_job(
    "predictions_job",
    selection=[predictions],
    partitions_def=model_day_partitions,
    description="Forecast one (day, model) partition: one run per pair, so per-model run "
    "limits apply (tag dagster/partition/model).",
)


def _sync_model_partitions(instance: dg.DagsterInstance, slugs: list[str]) -> list[str]:
    existing = set(instance.get_dynamic_partitions(model_partitions.name))
    missing = [slug for slug in slugs if slug not in existing]
    if missing:
        instance.add_dynamic_partitions(model_partitions.name, missing)
    return missing


@dg.schedule(
    job=predictions_job,
    cron_schedule="0 7 * * *",  # after markets_daily (06:00 UTC) has landed today's markets
    execution_timezone="UTC",
    name="predictions_daily",
)
def predictions_daily(context: dg.ScheduleEvaluationContext, app_db: AppDatabase):
    day = context.scheduled_execution_time.date().isoformat()
    with app_db.connect() as conn:
        enabled = [m.slug for m in model_store.list_models(conn, enabled_only=True)]
    if not enabled:
        return dg.SkipReason("no enabled model in the registry")
    _sync_model_partitions(context.instance, enabled)
    return [
        dg.RunRequest(
            run_key=f"{day}|{slug}",
            partition_key=dg.MultiPartitionKey({"day": day, "model": slug}),
        )
        for slug in enabled
    ]


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `models` partition for every model in the registry (repairs drift).",
)
def model_registry_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase):
    with app_db.connect() as conn:
        slugs = [m.slug for m in model_store.list_models(conn)]
    existing = set(context.instance.get_dynamic_partitions(model_partitions.name))
    missing = [slug for slug in slugs if slug not in existing]
    if not missing:
        return dg.SkipReason(f"{len(slugs)} models, partitions in step")
    return dg.SensorResult(
        dynamic_partitions_requests=[model_partitions.build_add_request(missing)]
    )
