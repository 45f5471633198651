import dagster as dg

from prediction_pipeline.defs.digests.assets import watchlist_digests
from prediction_pipeline.defs.digests.schedules import digests_job, digests_schedule

defs = dg.Definitions(
    assets=dg.with_source_code_references([watchlist_digests]),
    jobs=[digests_job],
    schedules=[digests_schedule],
)
