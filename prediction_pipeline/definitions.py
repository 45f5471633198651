"""The one Definitions object of the code location: every workload's defs, merged, plus
the resources configured from the environment."""

import dagster as dg

from prediction_pipeline.defs.deltas import definitions as deltas
from prediction_pipeline.defs.markets import definitions as markets
from prediction_pipeline.defs.predictions import definitions as predictions
from prediction_pipeline.defs.scoring import definitions as scoring
from prediction_pipeline.resources import default_resources

defs = dg.Definitions.merge(
    markets.defs,
    predictions.defs,
    deltas.defs,
    scoring.defs,
    dg.Definitions(resources=default_resources()),
)
