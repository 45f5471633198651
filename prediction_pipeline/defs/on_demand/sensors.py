"""Sensors of on-demand work: launch queued rows, recover dead runs, alert on failures."""

import datetime as dt
import json

import dagster as dg

from prediction_pipeline.defs.on_demand.jobs import prediction_request_job, prediction_session_job
from prediction_pipeline.resources import AlertSettings, AppDatabase
from prediction_pipeline.services import alerts
from prediction_pipeline.store import on_demand as on_demand_store

REQUEST_TAG = "prediction_pipeline/request_id"
SESSION_TAG = "prediction_pipeline/session_id"
# Run monitoring fails runs that hang past these (dagster.yaml: run_monitoring enabled).
REQUEST_MAX_RUNTIME_SECONDS = 15 * 60
SESSION_MAX_RUNTIME_SECONDS = 30 * 60
# The daemon visits sensors every ~5 s and skips one whose last tick began less than its
# minimum interval ago; an interval of 5 s would then tick only every other visit (~10 s).
QUEUE_SENSOR_INTERVAL_SECONDS = 1
# A user is waiting: on-demand runs go ahead of queued batch runs in the run on_demand_store.
ON_DEMAND_PRIORITY = "10"
MAX_LAUNCHES = 3  # a request or session whose runs died this many times fails, refunded
RECOVERY_GRACE_SECONDS = 120  # leave young rows to their sensor and run
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
    with app_db.connect() as conn:
        rows = on_demand_store.queued_requests(conn, limit=100)
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
    with app_db.connect() as conn:
        rows = on_demand_store.queued_sessions(conn, limit=100)
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


def recover(instance: dg.DagsterInstance, engine, now: dt.datetime, log=None) -> dict:
    """Requeue requests and sessions whose run died (failed, canceled, lost, or killed by run
    monitoring after hanging), or fail them with a refund after MAX_LAUNCHES launches.
    Never charges twice (debits happen once, at creation) and never duplicates a prediction
    (requests and (session, model) pairs are unique in `predictions`)."""
    counts = {"requeued": 0, "failed": 0, "alive": 0}
    with engine.connect() as conn:
        items = on_demand_store.unfinished_items(conn)
    for kind, item_id, status, updated_at, launches in items:
        if (now - updated_at).total_seconds() < RECOVERY_GRACE_SECONDS:
            continue
        tag = REQUEST_TAG if kind == "request" else SESSION_TAG
        runs = instance.get_runs(filters=dg.RunsFilter(tags={tag: item_id}), limit=1)
        run = runs[0] if runs else None
        if run is not None and run.status in ALIVE:
            counts["alive"] += 1
            continue
        if run is None and status == on_demand_store.QUEUED:
            continue  # not launched yet: its sensor will (or is turned off)
        reason = f"run {run.run_id} ended {run.status.value}" if run else "no run found"
        with engine.begin() as conn:
            if launches + 1 < MAX_LAUNCHES:
                # False when it finished since `items` was read: nothing to recover.
                counts["requeued"] += on_demand_store.requeue(conn, kind, item_id)
            elif kind == "request":
                on_demand_store.finish_request(
                    conn, item_id, prediction_id=None, error=f"gave up: {reason}"
                )
                counts["failed"] += 1
            else:
                on_demand_store.fail_session(conn, item_id, f"gave up: {reason}")
                counts["failed"] += 1
        if log:
            log.warning(f"{kind} {item_id}: {reason}; launches={launches + 1}")
    return counts


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def on_demand_recovery_sensor(context: dg.SensorEvaluationContext, app_db: AppDatabase):
    """Finds requests and sessions whose run died or hung and re-launches or fails them."""
    counts = recover(context.instance, app_db.engine(), dt.datetime.now(dt.UTC), context.log)
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
    partition = run.tags.get("dagster/partition")
    url = f"{alert_settings.dagster_url.rstrip('/')}/runs/{run.run_id}"
    webhook = alert_settings.webhook_url
    channels = ["log"] + (["webhook"] if webhook else [])
    with app_db.begin() as conn:
        alert_id = on_demand_store.record_alert(
            conn,
            run_id=run.run_id,
            job_name=run.job_name,
            partition_key=partition,
            error=error,
            run_url=url,
            notified_via=",".join(channels),
            deliver=bool(webhook),
        )
    if alert_id is None:
        return
    alert = alerts.Alert(alert_id, run.run_id, run.job_name, partition, error, url)
    context.log.error(alert.text)
    if webhook:
        alerts.deliver(app_db.engine(), alert, webhook, seen_attempts=0, log=context.log.warning)


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def alert_delivery_retries(
    context: dg.SensorEvaluationContext, app_db: AppDatabase, alert_settings: AlertSettings
):
    """Re-sends run-failure alerts whose webhook POST failed, with a growing pause, at most
    `MAX_ALERT_ATTEMPTS` times each (the row keeps the attempts and the last error)."""
    if not alert_settings.webhook_url:
        return dg.SkipReason("no alert webhook configured")
    counts = alerts.retry_undelivered(
        app_db.engine(),
        alert_settings.webhook_url,
        dt.datetime.now(dt.UTC),
        log=context.log.warning,
    )
    return dg.SkipReason(json.dumps(counts))
