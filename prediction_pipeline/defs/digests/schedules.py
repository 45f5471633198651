"""Send today's digests every morning (UTC), after the predictions of the day."""

import dagster as dg

from prediction_pipeline.defs.digests.assets import watchlist_digests

digests_job = dg.define_asset_job(
    "digests_job",
    selection=dg.AssetSelection.assets(watchlist_digests),
    description="Send one day's watchlist digests: one email per user and day.",
)

# end_offset=1 on the day partitions makes this target today's partition. 08:00 UTC: after
# markets (06:00) and predictions (07:00).
digests_schedule = dg.build_schedule_from_partitioned_job(
    digests_job, hour_of_day=8, minute_of_hour=0, name="digests_daily"
)
