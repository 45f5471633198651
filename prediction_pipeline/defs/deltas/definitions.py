import dagster as dg

from prediction_pipeline.defs.deltas.assets import prediction_deltas

# For operators and backfills; the daily partition is started by `pipeline_automation`.
deltas_job = dg.define_asset_job(
    "deltas_job",
    selection=[prediction_deltas],
    description="Snapshot how recent predictions stand against one day's market prices.",
)

defs = dg.Definitions(
    assets=dg.with_source_code_references([prediction_deltas]),
    jobs=[deltas_job],
)
