"""End to end with a real `dagster-daemon`: on-demand requests and sessions.

`test_on_demand.py` evaluates the sensors by hand and executes their runs in-process; here the
daemon does all of it, as in production: its sensor loop evaluates
`prediction_requests_sensor` / `prediction_sessions_sensor` (declared `default_status=RUNNING`,
so no one has to switch them on), the queued run coordinator dequeues the runs and the default
run launcher starts a run worker process for each.

1. a temporary DAGSTER_HOME with the repo's `dagster.yaml` (its limits untouched, a 1 s
   dequeue interval); an app database (SQLite file) migrated to head, 3 days of synthetic
   markets up to today ingested in-process on the same instance, one OpenRouter model
   registered; a `FakeOpenRouterServer` that answers 503 with `Retry-After: 1` for good to
   any prompt about the chosen market;
2. `dagster-daemon run -w workspace.yaml` as a subprocess with the code location's variables
   (app database, data folder, OpenRouter key and base URL); the module waits until both
   queue sensors have a finished tick recorded, which proves the daemon evaluates them;
3. a request for `baseline/momentum`, queued through the web app's API, becomes exactly one
   run (tagged with the request id, run key `request:<id>:0`) and one prediction linked to the
   request, which ends `succeeded`; two more ticks of its sensor after that launch nothing;
4. a session of `baseline/market`, `baseline/momentum` and the failing OpenRouter model (the
   resource's default retries: `Forecasters.max_http_attempts` calls, each wait the server's
   Retry-After of 1 s instead of the backoff's random 0-31 s) ends `partial` in one run: two
   predictions linked to the session, one refund, one notification `.eml` in
   `$PREDICTION_PIPELINE_DATA_DIR/outbox`; the run itself fails in its last step, `verdict`.

Everything waits on states (rows, runs, ticks) with generous deadlines; nothing asserts on
durations. About 50 s in all, most of it process start-ups and the failing model's retries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.scheduler.instigation import TickStatus

from prediction_pipeline.defs.on_demand.jobs import prediction_request_job, prediction_session_job
from prediction_pipeline.defs.on_demand.sensors import REQUEST_TAG, SESSION_TAG
from prediction_pipeline.resources import Forecasters
from prediction_pipeline.services import on_demand
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import migrate, queue_items
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import credit_ledger, prediction_failures, predictions
from prediction_pipeline_tests.daemon_harness import (
    Services,
    daemon_command,
    failure_report,
    instance_config,
    open_instance,
    sensor_ticks,
    service_env,
    wait_for_sensor_ticks,
    wait_until,
    write_instance_yaml,
)
from prediction_pipeline_tests.fakes.openrouter_server import (
    Behaviour,
    FakeOpenRouterServer,
    Fault,
)
from prediction_pipeline_tests.pipeline_helpers import ingest_days

pytestmark = pytest.mark.daemon

API_KEY = "sk-or-test-daemon-on-demand"
ONLINE = "acme/online-1"
USER = "ada@example.com"
REQUESTS_SENSOR, SESSIONS_SENSOR = "prediction_requests_sensor", "prediction_sessions_sensor"
SYNTHETIC_SIZE = 40
STARTUP_TIMEOUT = 90.0  # the daemon loads the code location, then ticks its sensors
REQUEST_TIMEOUT = 90.0
# The failing model waits 1 s between its 6 calls; steps are processes of their own.
SESSION_TIMEOUT = 150.0


@dataclass
class World:
    instance: dg.DagsterInstance
    engine: sa.Engine
    services: Services
    server: FakeOpenRouterServer
    outbox: Path
    market_id: int
    question: str

    def runs(self, job_name: str | None = None, **tags: str) -> list[dg.RunRecord]:
        runs_filter = dg.RunsFilter(job_name=job_name, tags=tags)
        return list(self.instance.get_run_records(filters=runs_filter))

    def count(self, table: sa.Table, *where) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    """One daemon for the module: starting it is most of the cost."""
    tmp = tmp_path_factory.mktemp("daemon_on_demand")
    home = tmp / "dagster_home"
    write_instance_yaml(home, instance_config(dequeue_interval_seconds=1))
    app_url = f"sqlite:///{tmp / 'app.db'}"
    with ExitStack() as stack:
        engine = make_engine(app_url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine)
        instance = stack.enter_context(open_instance(home))
        today = dt.datetime.now(dt.UTC).date()
        # Markets go to the app database through a throwaway instance: materialized on the
        # daemon's, they would start the daily chain (pipeline_automation) beside the test.
        ingest_days(app_url, dg.DagsterInstance.ephemeral(), days=3, end=today, size=SYNTHETIC_SIZE)
        with engine.begin() as conn:
            model_store.upsert_model(
                conn, model_store.ModelSpec(ONLINE, model_store.OPENROUTER_PROVIDER)
            )
            market = conn.execute(
                sa.text("SELECT id, question FROM markets WHERE status = 'open' ORDER BY id")
            ).first()
        server = stack.enter_context(FakeOpenRouterServer(api_key=API_KEY))
        # Retry-After keeps the retries' waits short and fixed (the backoff's are random).
        server.on_keyword(
            market.question, Behaviour(Fault.UNAVAILABLE, retry_after=1.0), forever=True
        )
        data_dir = tmp / "data"
        env = service_env(
            home,
            PREDICTION_PIPELINE_DATABASE_URL=app_url,
            PREDICTION_PIPELINE_DATA_DIR=str(data_dir),
            OPENROUTER_API_KEY=API_KEY,
            OPENROUTER_BASE_URL=server.base_url,
        )
        services = Services(stack, env, tmp)
        services.start("daemon", daemon_command())
        try:
            # Declared RUNNING in code: the daemon evaluates them with no state switched on.
            for name in (REQUESTS_SENSOR, SESSIONS_SENSOR):
                wait_for_sensor_ticks(instance, name, 1, timeout=STARTUP_TIMEOUT, services=services)
        except BaseException:
            services.print_logs()
            raise
        yield World(
            instance=instance,
            engine=engine,
            services=services,
            server=server,
            outbox=data_dir / "outbox",
            market_id=market.id,
            question=market.question,
        )


@pytest.fixture
def logs_on_failure(world, request) -> Iterator[None]:
    """The daemon's log when the test failed (the call's report precedes this teardown)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        world.services.print_logs()


def finished_run(world: World, tags: dict[str, str]) -> dg.RunRecord:
    """The one run with `tags`, once it has ended."""

    def ended() -> list[dg.RunRecord]:
        records = world.runs(**tags)
        return records if records and all(r.dagster_run.is_finished for r in records) else []

    records = wait_until(
        ended,
        timeout=REQUEST_TIMEOUT,
        services=world.services,
        what=lambda: (
            f"a finished run tagged {tags}: {[r.dagster_run.status for r in world.runs(**tags)]}"
        ),
    )
    assert len(records) == 1, [r.dagster_run.run_id for r in records]
    return records[0]


def test_a_request_row_becomes_one_run_and_one_prediction(world, logs_on_failure):
    on_demand.grant(world.engine, "rex@example.com", 1)  # a request costs one credit
    request_id = on_demand.request_prediction(
        world.engine, world.market_id, "baseline/momentum", user_email="rex@example.com"
    )
    assert on_demand.status(world.engine, request_id)["status"] == queue_items.QUEUED

    info = wait_until(
        lambda: (
            (s := on_demand.status(world.engine, request_id))["status"] in queue_items.REQUEST_FINAL
            and s
        ),
        timeout=REQUEST_TIMEOUT,
        services=world.services,
        what=lambda: f"request {request_id} final: {on_demand.status(world.engine, request_id)}",
    )
    record = finished_run(world, {REQUEST_TAG: request_id})
    run = record.dagster_run
    assert run.status == dg.DagsterRunStatus.SUCCESS, failure_report(world.instance, [record])
    assert info["status"] == queue_items.SUCCEEDED and info["error"] is None, info
    assert run.job_name == prediction_request_job.name
    assert run.tags["dagster/run_key"] == f"request:{request_id}:0"
    # Not under the per-model run limit (it would wait for a running batch of its model).
    assert "dagster/partition/model" not in run.tags
    assert run.tags["prediction_pipeline/model"] == "baseline/momentum"
    assert info["run_id"] == run.run_id

    # Exactly one prediction, linked to the request and to the row's status.
    with world.engine.connect() as conn:
        rows = conn.execute(
            sa.select(predictions.c.id, predictions.c.origin, predictions.c.model_slug).where(
                predictions.c.request_id == request_id
            )
        ).all()
    assert [(r.id, r.origin, r.model_slug) for r in rows] == [
        (info["prediction_id"], "request", "baseline/momentum")
    ]
    assert world.count(predictions) == 1

    # The sensor launched that run, and no other run in any of its ticks so far ...
    launched = [
        run_id for tick in sensor_ticks(world.instance, REQUESTS_SENSOR) for run_id in tick.run_ids
    ]
    assert launched == [run.run_id]
    # ... and two more of its ticks, after the run ended, launch nothing.
    later = wait_for_sensor_ticks(
        world.instance, REQUESTS_SENSOR, 2, after=record.end_time, services=world.services
    )
    assert all(t.status == TickStatus.SKIPPED and not t.run_ids for t in later), later
    assert len(world.runs(**{REQUEST_TAG: request_id})) == 1
    request_runs = world.runs(job_name=prediction_request_job.name)
    assert [r.dagster_run.run_id for r in request_runs] == [run.run_id]
    assert world.count(predictions) == 1


def test_a_session_with_a_failing_model_ends_partial_with_one_refund(world, logs_on_failure):
    assert on_demand.grant(world.engine, USER, 5) == 5
    models = ["baseline/market", "baseline/momentum", ONLINE]
    session_id = on_demand.create_session(world.engine, world.market_id, models, USER)
    assert on_demand.status(world.engine, session_id)["balance"] == 2  # debited at creation

    info = wait_until(
        lambda: (s := on_demand.status(world.engine, session_id))["step"] == "done" and s,
        timeout=SESSION_TIMEOUT,
        services=world.services,
        what=lambda: f"session {session_id} notified: {on_demand.status(world.engine, session_id)}",
    )
    record = finished_run(world, {SESSION_TAG: session_id})
    run = record.dagster_run
    # A failed model fails the run (red in the UI, seen by run_failure_alerts), in its last
    # step, after the session settled, refunded and notified.
    assert run.status == dg.DagsterRunStatus.FAILURE, failure_report(world.instance, [record])
    failed_steps = [
        e.step_key
        for e in world.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    ]
    assert failed_steps == ["verdict"], failure_report(world.instance, [record])
    assert run.job_name == prediction_session_job.name
    assert run.tags["dagster/run_key"] == f"session:{session_id}:0"
    assert info["run_id"] == run.run_id

    assert info["status"] == queue_items.PARTIAL, info
    assert {m: p["status"] for m, p in info["progress"].items()} == {
        "baseline/market": queue_items.SUCCEEDED,
        "baseline/momentum": queue_items.SUCCEEDED,
        ONLINE: queue_items.FAILED,
    }
    assert "503" in info["progress"][ONLINE]["error"], info["progress"][ONLINE]
    assert info["credits_charged"] == 3 and info["credits_refunded"] == 1 and info["balance"] == 3

    # Two predictions linked to the session (the built-in models), one refund (the failed one).
    with world.engine.connect() as conn:
        linked = conn.execute(
            sa.select(predictions.c.model_slug, predictions.c.origin).where(
                predictions.c.session_id == session_id
            )
        ).all()
        ledger = conn.execute(
            sa.select(credit_ledger.c.reason, credit_ledger.c.model_slug, credit_ledger.c.delta)
            .where(credit_ledger.c.session_id == session_id)
            .order_by(credit_ledger.c.id)
        ).all()
    assert sorted(linked) == [("baseline/market", "session"), ("baseline/momentum", "session")]
    assert [tuple(row) for row in ledger] == [
        ("debit", credit_store.SESSION_DEBIT_MODEL, -3),
        ("refund", ONLINE, 1),
    ]
    assert world.count(prediction_failures, prediction_failures.c.model_slug == ONLINE) == 1

    # The failing model used its retries (the resource's defaults), all answered 503.
    attempts = Forecasters.model_fields["max_http_attempts"].default
    assert [r.model for r in world.server.requests] == [ONLINE] * attempts
    assert world.server.counts == {Fault.UNAVAILABLE.value: attempts}

    # One notification in the outbox, telling the user about the partial result and refund.
    [mail] = list(world.outbox.glob("*.eml"))
    text = mail.read_text()
    assert f"To: {USER}" in text and "partial" in text and "refunded" in text, text
    assert len(world.runs(**{SESSION_TAG: session_id})) == 1
