import dagster as dg

from prediction_pipeline.defs.digests.assets import watchlist_digests

# For operators and backfills; the daily partition is started by `pipeline_automation` once
# the day's deltas are in.
digests_job = dg.define_asset_job(
    "digests_job",
    selection=dg.AssetSelection.assets(watchlist_digests),
    description="Send one day's watchlist digests: one email per user and day.",
)

defs = dg.Definitions(
    assets=dg.with_source_code_references([watchlist_digests]),
    jobs=[digests_job],
)
