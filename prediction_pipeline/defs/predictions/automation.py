"""The predictions job (operators, backfills; today's partitions are started by
`pipeline_automation`, defs/automation.py) and the sensor that keeps the `models` dynamic
partitions in step with the registry."""

import dagster as dg

from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.partitions import model_day_partitions, model_partitions
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.services.models import model_slugs

predictions_job = dg.define_asset_job(
    "predictions_job",
    selection=[predictions],
    partitions_def=model_day_partitions,
    description="Forecast one (day, model) partition: one run per pair, so per-model run "
    "limits apply (tag dagster/partition/model).",
)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `models` partition for every model in the registry (repairs drift).",
)
def model_registry_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase):
    with app_db.connect() as conn:
        slugs = model_slugs(conn)
    existing = set(context.instance.get_dynamic_partitions(model_partitions.name))
    missing = [slug for slug in slugs if slug not in existing]
    if not missing:
        return dg.SkipReason(f"{len(slugs)} models, partitions in step")
    return dg.SensorResult(
        dynamic_partitions_requests=[model_partitions.build_add_request(missing)]
    )
