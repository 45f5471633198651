"""The one Definitions object of the code location: every workload's defs, merged, plus
the resources configured from the environment."""

import dagster as dg

from prediction_pipeline.defs.automation import automation_sensor
from prediction_pipeline.defs.deltas import definitions as deltas
from prediction_pipeline.defs.digests import definitions as digests
from prediction_pipeline.defs.markets import definitions as markets
from prediction_pipeline.defs.on_demand import definitions as on_demand
from prediction_pipeline.defs.predictions import definitions as predictions
from prediction_pipeline.defs.scoring import definitions as scoring
from prediction_pipeline.resources import default_resources

defs = dg.Definitions.merge(
    markets.defs,
    predictions.defs,
    deltas.defs,
    scoring.defs,
    digests.defs,
    on_demand.defs,
    # The daily chain after markets (defs/automation.py).
    dg.Definitions(sensors=[automation_sensor]),
    # Most runs are one step (a partition, a request): run steps in the run worker instead of
    # starting a process per step. Jobs that fan out (sessions) choose multiprocess.
    dg.Definitions(resources=default_resources(), executor=dg.in_process_executor),
)
