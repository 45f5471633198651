"""On-demand requests and sessions: sensors evaluated against a real instance, runs executed
on it with the run config and tags the sensor asked for."""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.defs.on_demand.jobs import prediction_request_job, prediction_session_job
from prediction_pipeline.defs.on_demand.sensors import (
    last_run_lookup,
    prediction_requests_sensor,
    prediction_sessions_sensor,
    run_failure_alerts,
)
from prediction_pipeline.resources import (
    AlertSettings,
    AppDatabase,
    DigestSettings,
    EmailTransportResource,
    Forecasters,
)
from prediction_pipeline.services import on_demand
from prediction_pipeline.services.recovery import RECOVERY_GRACE_SECONDS, recover_dead_work
from prediction_pipeline.store import alerts as alert_store
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import queue_items
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store.tables import credit_ledger, predictions
from prediction_pipeline_tests.fakes.openrouter_server import FakeOpenRouterServer, Fault
from prediction_pipeline_tests.pipeline_helpers import ingest_days

KEY = "sk-test-on-demand"
USER = "ada@example.com"
ONLINE = "acme/online-1"


@pytest.fixture
def server():
    with FakeOpenRouterServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def world(database_url, engine, server, tmp_path):
    today = dt.datetime.now(dt.UTC).date()
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(database_url, instance, days=3, end=today, size=60)
        with engine.begin() as conn:
            model_store.upsert_model(conn, model_store.ModelSpec(ONLINE, "openrouter"))
            market = conn.execute(sa.text("SELECT id, question FROM markets LIMIT 1")).first()
        resources = {
            "app_db": AppDatabase(url=database_url),
            "forecasters": Forecasters(
                openrouter_api_key=KEY,
                openrouter_base_url=server.base_url,
                timeout_seconds=2,
                max_http_attempts=2,
                retry_initial_wait_seconds=0.01,
                retry_max_wait_seconds=0.05,
            ),
            "email_transport": EmailTransportResource(
                kind="outbox", outbox_dir=str(tmp_path / "out")
            ),
            "digest_settings": DigestSettings(),
        }
        yield {
            "instance": instance,
            "resources": resources,
            "market": market,
            "outbox": tmp_path / "out",
        }


def tick(sensor, world):
    with dg.build_sensor_context(
        instance=world["instance"], resources={"app_db": world["resources"]["app_db"]}
    ) as context:
        result = sensor(context)
    return [] if isinstance(result, dg.SkipReason) else list(result)


def launch(job, request, world):
    """What the daemon does with a RunRequest: a run of the job with its config and tags."""
    return job.execute_in_process(
        run_config=request.run_config,
        tags={**request.tags, "dagster/run_key": request.run_key},
        instance=world["instance"],
        resources=world["resources"],
        raise_on_error=False,
    )


def count(engine, table, *where):
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where))


def test_a_request_becomes_one_run_and_one_prediction(world, engine):
    on_demand.grant(engine, USER, 2)
    request_id = on_demand.request_prediction(
        engine, world["market"].id, "baseline/momentum", user_email=USER
    )
    assert on_demand.status(engine, request_id)["status"] == "queued"
    assert on_demand.status(engine, request_id)["balance"] == 1  # debited at creation
    [run_request] = tick(prediction_requests_sensor, world)
    assert run_request.run_key == f"request:{request_id}:0"
    # Not under the per-model run limit (it would queue behind the model's daily batch); the
    # shared per-model call budget (store.model_limits) keeps the provider's limits instead.
    assert "dagster/partition/model" not in run_request.tags
    assert run_request.tags["prediction_pipeline/model"] == "baseline/momentum"
    assert launch(prediction_request_job, run_request, world).success

    info = on_demand.status(engine, request_id)
    assert info["status"] == "succeeded" and info["prediction_id"]
    assert info["credits_charged"] == 1 and info["credits_refunded"] == 0 and info["balance"] == 1
    assert count(engine, predictions, predictions.c.request_id == request_id) == 1
    assert tick(prediction_requests_sensor, world) == []  # ticking again launches nothing
    # Re-running the same run (an op retry, a re-execution) does not predict again.
    assert launch(prediction_request_job, run_request, world).success
    assert count(engine, predictions) == 1


def test_session_with_a_failing_model_ends_partial_with_one_refund(world, engine, server):
    server.on_keyword(world["market"].question[:40], Fault.UNAVAILABLE, forever=True)
    assert on_demand.grant(engine, USER, 5) == 5
    session_id = on_demand.create_session(
        engine, world["market"].id, ["baseline/market", "baseline/momentum", ONLINE], USER
    )
    assert on_demand.status(engine, session_id)["balance"] == 2  # debited at creation
    [run_request] = tick(prediction_sessions_sensor, world)
    result = launch(prediction_session_job, run_request, world)
    # The run fails (red in the UI, seen by run_failure_alerts) in its last step, after the
    # session settled, refunded and notified.
    assert not result.success
    [failed] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failed.step_key == "verdict"
    assert ONLINE in failed.step_failure_data.error.message, failed.step_failure_data.error
    assert "503" in failed.step_failure_data.error.message

    info = on_demand.status(engine, session_id)
    assert info["status"] == "partial" and info["step"] == "done"
    assert {m: p["status"] for m, p in info["progress"].items()} == {
        "baseline/market": "succeeded",
        "baseline/momentum": "succeeded",
        ONLINE: "failed",
    }
    assert info["credits_refunded"] == 1 and info["balance"] == 3
    assert count(engine, predictions, predictions.c.session_id == session_id) == 2
    refunds = count(engine, credit_ledger, credit_ledger.c.reason == "refund")
    assert refunds == 1
    [mail] = list(world["outbox"].glob("*.eml"))
    assert "partial" in mail.read_text() and "refunded" in mail.read_text()

    # A second run of the same session changes nothing: no new refund, no new mail.
    assert not launch(prediction_session_job, run_request, world).success
    assert count(engine, credit_ledger, credit_ledger.c.reason == "refund") == 1
    assert len(list(world["outbox"].glob("*.eml"))) == 1


def test_a_failed_request_fails_its_run_and_raises_one_alert(world, engine, database_url):
    """No API key: the prediction fails; the row records why and is refunded, the run fails
    (not retried) and run_failure_alerts records it."""
    on_demand.grant(engine, USER, 1)
    request_id = on_demand.request_prediction(engine, world["market"].id, ONLINE, user_email=USER)
    [run_request] = tick(prediction_requests_sensor, world)
    resources = {**world["resources"], "forecasters": Forecasters(openrouter_api_key=None)}
    result = prediction_request_job.execute_in_process(
        run_config=run_request.run_config,
        tags={**run_request.tags, "dagster/run_key": run_request.run_key},
        instance=world["instance"],
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    step_failures = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
    ]
    assert len(step_failures) == 1  # no op retry: the row is final
    assert "OPENROUTER_API_KEY is not set" in step_failures[0].step_failure_data.error.message

    info = on_demand.status(engine, request_id)
    assert info["status"] == "failed" and "OPENROUTER_API_KEY is not set" in info["error"]
    assert info["credits_refunded"] == 1 and info["balance"] == 1
    assert info["run_id"] == result.run_id

    run = world["instance"].get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_instance=world["instance"],
        dagster_run=run,
        dagster_event=failure,
        resources={"app_db": AppDatabase(url=database_url), "alert_settings": AlertSettings()},
    ).for_run_failure()
    run_failure_alerts(context)
    with engine.connect() as conn:
        [alert] = alert_store.alerts(conn)
    assert alert.run_id == result.run_id and alert.job_name == prediction_request_job.name
    assert request_id in alert.error and "OPENROUTER_API_KEY is not set" in alert.error


def test_not_enough_credits_queues_nothing(world, engine):
    on_demand.grant(engine, USER, 1)
    with pytest.raises(credit_store.InsufficientCredits, match="costs 2 credits; the balance is 1"):
        on_demand.create_session(engine, world["market"].id, ["baseline/market", ONLINE], USER)
    assert tick(prediction_sessions_sensor, world) == []
    with pytest.raises(queue_items.UnknownModel):
        on_demand.create_session(engine, world["market"].id, ["nope/nope"], USER)


def test_a_dead_session_run_is_relaunched_without_double_charge(world, engine):
    on_demand.grant(engine, USER, 3)
    session_id = on_demand.create_session(
        engine, world["market"].id, ["baseline/market", "baseline/momentum"], USER
    )
    [first] = tick(prediction_sessions_sensor, world)
    # The run dies after one model: run only its research step and one model step, then
    # mark the run failed, as run monitoring would after its worker vanished.
    with engine.begin() as conn:
        session_store.start_session(conn, session_id, "dead-run")
    on_demand.predict_session_model(
        engine,
        world["resources"]["forecasters"].build,
        (),
        session_id,
        "baseline/market",
        "dead-run",
    )
    dead = world["instance"].create_run_for_job(
        prediction_session_job, run_config=first.run_config, tags={**first.tags}
    )
    world["instance"].report_run_failed(dead)
    assert tick(prediction_sessions_sensor, world) == []  # running, not queued

    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=RECOVERY_GRACE_SECONDS + 1)
    assert recover_dead_work(engine, last_run_lookup(world["instance"]), later)["requeued"] == 1
    [second] = tick(prediction_sessions_sensor, world)
    assert second.run_key == f"session:{session_id}:1" != first.run_key
    assert launch(prediction_session_job, second, world).success

    info = on_demand.status(engine, session_id)
    assert info["status"] == "completed" and info["balance"] == 1 and info["credits_refunded"] == 0
    assert count(engine, predictions, predictions.c.session_id == session_id) == 2
    assert count(engine, credit_ledger, credit_ledger.c.reason == "debit") == 1


def test_recovery_gives_up_with_a_refund_after_repeated_deaths(world, engine):
    on_demand.grant(engine, USER, 2)
    session_id = on_demand.create_session(engine, world["market"].id, ["baseline/market"], USER)
    for launches in range(3):
        # Past the grace period of this launch (each requeue restarts it): a `later` fixed
        # before the loop made the test depend on how fast the machine ran it.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=RECOVERY_GRACE_SECONDS + 1)
        [request] = tick(prediction_sessions_sensor, world)
        assert request.run_key.endswith(f":{launches}")
        run = world["instance"].create_run_for_job(
            prediction_session_job, run_config=request.run_config, tags=request.tags
        )
        world["instance"].report_run_failed(run)
        counts = recover_dead_work(engine, last_run_lookup(world["instance"]), later)
    assert counts["failed"] == 1
    info = on_demand.status(engine, session_id)
    assert info["status"] == "failed" and info["credits_refunded"] == 1 and info["balance"] == 2


def test_a_request_that_fails_for_good_is_refunded_what_it_cost(world, engine, server):
    server.on_keyword(world["market"].question[:40], Fault.UNAVAILABLE, forever=True)
    on_demand.grant(engine, USER, 1)
    request_id = on_demand.request_prediction(
        engine, world["market"].id, ONLINE, user_email=USER, idempotency_key="retry-1"
    )
    assert on_demand.status(engine, request_id)["balance"] == 0
    [run_request] = tick(prediction_requests_sensor, world)
    launch(prediction_request_job, run_request, world)

    info = on_demand.status(engine, request_id)
    assert info["status"] == "failed" and info["error"]
    assert info["credits_charged"] == 1 and info["credits_refunded"] == 1 and info["balance"] == 1
    # A retried POST of the same request answers with the same, finished request.
    again = on_demand.request_prediction(
        engine, world["market"].id, ONLINE, user_email=USER, idempotency_key="retry-1"
    )
    assert again == request_id and on_demand.status(engine, request_id)["balance"] == 1
    assert count(engine, credit_ledger, credit_ledger.c.reason == "refund") == 1
