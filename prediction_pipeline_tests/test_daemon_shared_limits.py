"""End to end with a real `dagster-daemon`: requests for a model do not wait behind its daily
batch, and the batch and the requests together stay within the model's provider limits.

1. a temporary DAGSTER_HOME with the repo's `dagster.yaml` (its run-queue limits untouched,
   a 1 s dequeue interval); an app database (SQLite) migrated to head with today's synthetic
   markets; one OpenRouter model M with `requests_per_second=RPS`, `max_in_flight=2`;
2. the stand-in provider enforces exactly those limits and allows no burst: a token bucket
   of one at RPS per second (a call arriving early gets 429) and at most 2 calls in flight;
3. the daemon as a subprocess; the batch of M for today submitted to the run queue with the
   tags its schedule gives it (`dagster job launch`, the per-model run limit applies to it);
4. once the batch is predicting, five requests for M posted through the HTTP API, 3 s apart.

Asserted: every request succeeds, each in its own run, before the batch run ends (with the
per-model run limit they would wait for it); the batch succeeds; at most 2% of all calls were
answered 429 and none for the in-flight cap. Nothing asserts on durations.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
import uuid
from contextlib import ExitStack

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from prediction_pipeline.defs.on_demand.sensors import REQUEST_TAG
from prediction_pipeline.services import api_access, on_demand
from prediction_pipeline.store import migrate, queue_items
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import predictions
from prediction_pipeline_tests.daemon_harness import (
    REPO,
    Services,
    cli,
    daemon_command,
    failure_report,
    instance_config,
    open_instance,
    service_env,
    wait_for_sensor_ticks,
    wait_until,
    write_instance_yaml,
)
from prediction_pipeline_tests.fakes.api_server import ApiServer
from prediction_pipeline_tests.fakes.openrouter_server import FakeOpenRouterServer
from prediction_pipeline_tests.pipeline_helpers import ingest_days

pytestmark = pytest.mark.daemon

API_KEY = "sk-or-test-daemon-shared"
MODEL = "acme/shared-1"
RPS = 1.25  # 50 markets: a batch of ~45 s; alone, the five requests were done by ~27 s
MAX_IN_FLIGHT = 2
LATENCY = 0.4
SYNTHETIC_SIZE = 160  # the batch takes the top 50 in the end-date window
REQUESTS = 5
USER = "ada@example.com"
TIMEOUT = 150.0


@pytest.mark.serial
def test_requests_run_beside_the_batch_within_one_budget(tmp_path):
    home = tmp_path / "dagster_home"
    write_instance_yaml(home, instance_config(dequeue_interval_seconds=1))
    app_url = f"sqlite:///{tmp_path / 'app.db'}"
    today = dt.datetime.now(dt.UTC).date()
    with ExitStack() as stack:
        engine = make_engine(app_url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine)
        instance = stack.enter_context(open_instance(home))
        # Markets go to the app database through a throwaway instance: materialized on the
        # daemon's, they would start the daily chain (pipeline_automation) beside the test's
        # own batch.
        ingest_days(app_url, dg.DagsterInstance.ephemeral(), days=3, end=today, size=SYNTHETIC_SIZE)
        with engine.begin() as conn:
            spec = model_store.ModelSpec(
                MODEL,
                model_store.OPENROUTER_PROVIDER,
                requests_per_second=RPS,
                max_in_flight=MAX_IN_FLIGHT,
            )
            model_store.upsert_model(conn, spec)
            markets = list(
                conn.scalars(sa.text("SELECT source_id FROM markets WHERE status = 'open'"))
            )
        instance.add_dynamic_partitions("models", [MODEL])
        server = stack.enter_context(
            FakeOpenRouterServer(
                api_key=API_KEY,
                rate_limit=RPS,
                burst=1,
                max_in_flight=MAX_IN_FLIGHT,
                latency_mean=LATENCY,
                latency_sigma=0.2,
            )
        )
        env = service_env(
            home,
            PREDICTION_PIPELINE_DATABASE_URL=app_url,
            PREDICTION_PIPELINE_DATA_DIR=str(tmp_path / "data"),
            OPENROUTER_API_KEY=API_KEY,
            OPENROUTER_BASE_URL=server.base_url,
        )
        services = Services(stack, env, tmp_path)
        services.start("daemon", daemon_command())
        try:
            wait_for_sensor_ticks(
                instance, "prediction_requests_sensor", 1, timeout=TIMEOUT, services=services
            )
            batch_id = launch_batch(env, today.isoformat())
            # The batch is predicting: its run started and its first prediction is stored.
            wait_until(
                lambda: count(engine, predictions.c.origin == "batch") > 0,
                timeout=TIMEOUT,
                services=services,
                what="the batch's first prediction",
            )
            request_ids = post_requests(engine, markets)
            finished = {}
            for request_id in request_ids:
                finished[request_id] = wait_until(
                    lambda r=request_id: final(engine, r),
                    timeout=TIMEOUT,
                    services=services,
                    what=lambda r=request_id: f"request {r}: {on_demand.status(engine, r)}",
                )
            batch_running_after_requests = not instance.get_run_by_id(batch_id).is_finished
            batch_done_before = count(engine, predictions.c.origin == "batch")
            batch = wait_until(
                lambda: (run := instance.get_run_by_id(batch_id)).is_finished and run,
                timeout=TIMEOUT,
                services=services,
                what="the batch run to end",
            )
        except BaseException:
            services.print_logs()
            raise
        counts = dict(server.counts)
        calls = server.request_count

    records = instance.get_run_records(dg.RunsFilter(run_ids=[batch_id]))
    assert batch.status == dg.DagsterRunStatus.SUCCESS, failure_report(instance, records)
    assert batch.tags["dagster/partition/model"] == MODEL  # the batch keeps its run limit
    for request_id, info in finished.items():
        assert info["status"] == queue_items.SUCCEEDED, info
        [record] = instance.get_run_records(dg.RunsFilter(tags={REQUEST_TAG: request_id}))
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS, failure_report(
            instance, [record]
        )
        assert "dagster/partition/model" not in record.dagster_run.tags
    # Every request was done while the batch run of its model was still running.
    assert batch_running_after_requests, (batch_done_before, finished)
    assert count(engine, predictions.c.origin == "batch") == 50
    # One budget for the model: the provider saw neither too many calls at once nor (beyond
    # the 2% the issue allows) calls too close together.
    assert counts.get("429_in_flight", 0) == 0, counts
    assert counts.get("429_rate", 0) <= 0.02 * calls, counts
    assert server.max_in_flight_seen <= MAX_IN_FLIGHT, counts
    print(f"\n[daemon shared limits] {timeline(engine)}; calls {calls}, answers {counts}")


def timeline(engine: sa.Engine) -> str:
    """When the batch's predictions and the requests' predictions were stored, in seconds
    from the batch's first: how much room the requests had before the batch ended."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(predictions.c.origin, predictions.c.created_at)).all()
    start = min(r.created_at for r in rows if r.origin == "batch")
    batch = [(r.created_at - start).total_seconds() for r in rows if r.origin == "batch"]
    requests = sorted((r.created_at - start).total_seconds() for r in rows if r.origin != "batch")
    return (
        f"batch predictions stored over {max(batch):.1f} s; the requests' at "
        f"{', '.join(f'{t:.1f}' for t in requests)} s"
    )


def launch_batch(env: dict[str, str], day: str) -> str:
    """Submit today's run of M to the run queue with the tags every (day, model) run carries."""
    partition = f"{day}|{MODEL}"
    tags = {
        "dagster/partition": partition,
        "dagster/partition/day": day,
        "dagster/partition/model": MODEL,
    }
    run_id = str(uuid.uuid4())
    command = cli("dagster", "dagster") + [
        "job",
        "launch",
        "-w",
        "workspace.yaml",
        "-j",
        "predictions_job",
        "--tags",
        json.dumps(tags),
        "--run-id",
        run_id,
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return run_id


def post_requests(engine: sa.Engine, markets: list[str]) -> list[str]:
    """Five requests for M through the HTTP API, 3 s apart."""
    key = api_access.create_key(engine, "web")
    ids = []
    with (
        ApiServer(engine) as api,
        httpx.Client(
            base_url=api.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client,
    ):
        answer = client.post("/v1/credits", json={"user": USER, "amount": REQUESTS})
        assert answer.status_code < 300, answer.text
        for index in range(REQUESTS):
            if index:
                time.sleep(3)
            body = {"market": markets[-1 - index], "model": MODEL, "user": USER}
            answer = client.post("/v1/predictions", json=body)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
    return ids


def final(engine: sa.Engine, request_id: str) -> dict | None:
    info = on_demand.status(engine, request_id)
    return info if info["status"] in queue_items.REQUEST_FINAL else None


def count(engine: sa.Engine, *where) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(predictions).where(*where))
