import dagster as dg

from prediction_pipeline.defs.scoring.assets import forecast_scores, model_leaderboard

# For operators (e.g. `rescore_all`); `pipeline_automation` runs it when markets resolve.
scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=[forecast_scores, model_leaderboard],
    description="Score predictions on newly resolved markets and rebuild the leaderboard.",
)

defs = dg.Definitions(
    assets=dg.with_source_code_references([forecast_scores, model_leaderboard]),
    jobs=[scoring_job],
)
