import dagster as dg

from prediction_pipeline.defs.markets.assets import markets
from prediction_pipeline.defs.markets.schedules import markets_job, markets_schedule

defs = dg.Definitions(
    assets=dg.with_source_code_references([markets]),
    jobs=[markets_job],
    schedules=[markets_schedule],
)
