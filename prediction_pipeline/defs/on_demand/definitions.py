import dagster as dg

from prediction_pipeline.defs.on_demand.jobs import prediction_request_job, prediction_session_job
from prediction_pipeline.defs.on_demand.sensors import (
    alert_delivery_retries,
    on_demand_recovery_sensor,
    prediction_requests_sensor,
    prediction_sessions_sensor,
    run_failure_alerts,
)

defs = dg.Definitions(
    jobs=[prediction_request_job, prediction_session_job],
    sensors=[
        prediction_requests_sensor,
        prediction_sessions_sensor,
        on_demand_recovery_sensor,
        run_failure_alerts,
        alert_delivery_retries,
    ],
)
