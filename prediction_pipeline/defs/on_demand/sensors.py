"""Sensors of on-demand work: launch queued rows, recover dead runs, alert on failures."""

import datetime as dt
import json

import dagster as dg

from prediction_pipeline.defs.on_demand.jobs import prediction_request_job, prediction_session_job
from prediction_pipeline.resources import AlertSettings, AppDatabase
from prediction_pipeline.services import alerts, on_demand, recovery

REQUEST_TAG = "prediction_pipeline/request_id"
SESSION_TAG = "prediction_pipeline/session_id"
# Run monitoring fails runs that hang past these (dagster.yaml: run_monitoring enabled).
REQUEST_MAX_RUNTIME_SECONDS = 15 * 60
SESSION_MAX_RUNTIME_SECONDS = 30 * 60
# The daemon visits sensors every ~5 s and skips one whose last tick began less than its
# minimum interval ago; an interval of 5 s would then tick only every other visit (~10 s).
QUEUE_SENSOR_INTERVAL_SECONDS = 1
# A user is waiting: on-demand runs go ahead of queued batch runs in the run queue.
ON_DEMAND_PRIORITY = "10"
# Every op of prediction_session_job takes the session id as config.
SESSION_OPS = ("research", "predict_model", "settle", "notify", "verdict")

ALIVE = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


def request_run_key(request_id: str, launches: int) -> str:
    return f"request:{request_id}:{launches}"


def session_run_key(session_id: str, launches: int) -> str:
    return f"session:{session_id}:{launches}"


@dg.sensor(
    job=prediction_request_job,
    minimum_interval_seconds=QUEUE_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def prediction_requests_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase):
    """One run per queued request. The run key makes a row launch once however often this
    ticks. No `dagster/partition/model` tag: a request must not queue behind its model's
    daily batch (the per-model run limit of dagster.yaml); its calls share the model's
    provider budget with the batch through the app database instead (store.model_limits)."""
    rows = on_demand.queued_requests(app_db.engine(), limit=100)
    if not rows:
        return dg.SkipReason("no queued requests")
    return [
        dg.RunRequest(
            run_key=request_run_key(row.id, row.launches),
            run_config={"ops": {"fulfil_request": {"config": {"request_id": row.id}}}},
            tags={
                REQUEST_TAG: row.id,
                "prediction_pipeline/model": row.model_slug,
                "dagster/max_runtime": str(REQUEST_MAX_RUNTIME_SECONDS),
                "dagster/priority": ON_DEMAND_PRIORITY,
            },
        )
        for row in rows
    ]


@dg.sensor(
    job=prediction_session_job,
    minimum_interval_seconds=QUEUE_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def prediction_sessions_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase):
    """One run per queued session (its model steps share the provider pool)."""
    rows = on_demand.queued_sessions(app_db.engine(), limit=100)
    if not rows:
        return dg.SkipReason("no queued sessions")
    requests = []
    for row in rows:
        ops = {name: {"config": {"session_id": row.id}} for name in SESSION_OPS}
        requests.append(
            dg.RunRequest(
                run_key=session_run_key(row.id, row.launches),
                run_config={"ops": ops},
                tags={
                    SESSION_TAG: row.id,
                    "prediction_pipeline/models": ",".join(row.models)[:200],
                    "dagster/max_runtime": str(SESSION_MAX_RUNTIME_SECONDS),
                    "dagster/priority": ON_DEMAND_PRIORITY,
                },
            )
        )
    return requests


def last_run_lookup(instance: dg.DagsterInstance) -> recovery.LastRunLookup:
    """The newest run of a request or session, found by the tag its sensor gave it."""

    def last_run(kind: str, item_id: str) -> recovery.LastRun | None:
        tag = REQUEST_TAG if kind == recovery.REQUEST else SESSION_TAG
        runs = instance.get_runs(filters=dg.RunsFilter(tags={tag: item_id}), limit=1)
        if not runs:
            return None
        run = runs[0]
        return recovery.LastRun(run.run_id, run.status.value, alive=run.status in ALIVE)

    return last_run


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def on_demand_recovery_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase):
    """Finds requests and sessions whose run died or hung and re-launches or fails them."""
    counts = recovery.recover_dead_work(
        app_db.engine(),
        last_run_lookup(context.instance),
        dt.datetime.now(dt.UTC),
        log=context.log.warning,
    )
    return dg.SkipReason(json.dumps(counts))


@dg.run_failure_sensor(
    name="run_failure_alerts",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_alerts(
    context: dg.RunFailureSensorContext, app_db: AppDatabase, alert_settings: AlertSettings
):
    """Every failed run: one row in `run_failure_alerts`, a log line, and the webhook when
    configured; with the run id, partition, error and a link to the run in the UI. A webhook
    POST that fails is retried by `alert_delivery_retries` on later ticks."""
    run = context.dagster_run
    steps = context.get_step_failure_events()
    error = "; ".join(
        f"{event.step_key}: {event.event_specific_data.error.message.strip()}" for event in steps
    ) or (context.failure_event.message or "run failed")
    alerts.report_run_failure(
        app_db.engine(),
        run_id=run.run_id,
        job_name=run.job_name,
        partition_key=run.tags.get("dagster/partition"),
        error=error,
        run_url=alert_settings.run_url(run.run_id),
        webhook=alert_settings.webhook(),
        log_error=context.log.error,
        log_warning=context.log.warning,
    )


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def alert_delivery_retries(
    context: dg.SensorEvaluationContext, app_db: AppDatabase, alert_settings: AlertSettings
):
    """Re-sends run-failure alerts whose webhook POST failed, with a growing pause, at most
    `MAX_ALERT_ATTEMPTS` times each (the row keeps the attempts and the last error)."""
    webhook = alert_settings.webhook()
    if webhook is None:
        return dg.SkipReason("no alert webhook configured")
    counts = alerts.retry_undelivered(
        app_db.engine(), webhook, dt.datetime.now(dt.UTC), log=context.log.warning
    )
    return dg.SkipReason(json.dumps(counts))
