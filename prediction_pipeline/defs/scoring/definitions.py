import dagster as dg

from prediction_pipeline.defs.scoring.assets import forecast_scores, model_leaderboard

scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=[forecast_scores, model_leaderboard],
    description="Score predictions on newly resolved markets and rebuild the leaderboard.",
)

# After the day's markets (06:00), predictions (07:00) and deltas (07:30) have landed.
scoring_daily = dg.ScheduleDefinition(
    name="scoring_daily", job=scoring_job, cron_schedule="45 7 * * *", execution_timezone="UTC"
)

defs = dg.Definitions(
    assets=dg.with_source_code_references([forecast_scores, model_leaderboard]),
    jobs=[scoring_job],
    schedules=[scoring_daily],
)
