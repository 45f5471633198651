import dagster as dg

from prediction_pipeline.defs.deltas.assets import prediction_deltas

deltas_job = dg.define_asset_job(
    "deltas_job",
    selection=[prediction_deltas],
    description="Snapshot how recent predictions stand against one day's market prices.",
)

# Today's partition (end_offset=1), after markets_daily (06:00) and predictions_daily (07:00).
deltas_daily = dg.build_schedule_from_partitioned_job(
    deltas_job, hour_of_day=7, minute_of_hour=30, name="deltas_daily"
)

defs = dg.Definitions(
    assets=dg.with_source_code_references([prediction_deltas]),
    jobs=[deltas_job],
    schedules=[deltas_daily],
)
