import dagster as dg

from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.defs.predictions.automation import (
    model_registry_sensor,
    predictions_job,
)

defs = dg.Definitions(
    assets=dg.with_source_code_references([predictions]),
    jobs=[predictions_job],
    sensors=[model_registry_sensor],
)
