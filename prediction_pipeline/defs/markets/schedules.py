"""Ingest today's markets every morning (UTC): the one schedule of the daily chain. What
follows (predictions, deltas, digests, scores) is started by the data, see defs/automation.py."""

import dagster as dg

from prediction_pipeline.defs.markets.assets import markets

markets_job = dg.define_asset_job(
    "markets_job",
    selection=dg.AssetSelection.assets(markets),
    description="Ingest one day of markets and snapshots, then check them.",
)

# end_offset=1 on the day partitions makes this target today's partition, not yesterday's.
markets_schedule = dg.build_schedule_from_partitioned_job(
    markets_job, hour_of_day=6, minute_of_hour=0, name="markets_daily"
)
