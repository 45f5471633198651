"""A failed run produces exactly one alert: a row, a log line and one webhook POST, retried on
later ticks when it fails, with the webhook's URL (its secret path) never logged or raised."""

import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import describe_error, redact_url
from prediction_pipeline.clients.webhook import WebhookClient, WebhookDeliveryError
from prediction_pipeline.defs.on_demand.sensors import alert_delivery_retries, run_failure_alerts
from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.resources import (
    AlertSettings,
    AppDatabase,
    Forecasters,
    default_resources,
)
from prediction_pipeline.services import alerts as alert_service
from prediction_pipeline.store import alerts as alert_store
from prediction_pipeline.store.tables import run_failure_alerts as alerts_table
from prediction_pipeline_tests.child_processes import CONTEXT, deliver_alert
from prediction_pipeline_tests.pipeline_helpers import partition


def no_sleep(seconds: float) -> None:
    """Skips the backoff pauses between HTTP attempts."""


@pytest.fixture
def webhook():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_failed_run_produces_one_alert(database_url, engine, webhook):
    url, received = webhook
    app_db = AppDatabase(url=database_url)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("models", ["baseline/market"])
        # No markets were ingested: the partition fails with a clear, non-retried error.
        result = dg.materialize(
            [predictions],
            partition_key=partition("baseline/market"),
            instance=instance,
            resources={"app_db": app_db, "forecasters": Forecasters()},
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
        )
        settings = AlertSettings(webhook_url=url, dagster_url="http://dagster.example:3000")
        for _ in range(2):  # the sensor sees the same failure twice: one alert
            context = dg.build_run_status_sensor_context(
                sensor_name="run_failure_alerts",
                dagster_instance=instance,
                dagster_run=run,
                dagster_event=failure,
                resources={"app_db": app_db, "alert_settings": settings},
            ).for_run_failure()
            run_failure_alerts(context)

    with engine.connect() as conn:
        rows = conn.execute(sa.select(alerts_table)).all()
    assert len(rows) == 1
    [alert] = rows
    assert alert.run_id == result.run_id
    assert alert.partition_key == "2026-11-02|baseline/market"
    assert "materialize `markets`" in alert.error
    assert alert.run_url == f"http://dagster.example:3000/runs/{result.run_id}"
    assert alert.notified_via == "log,webhook"
    assert alert.delivered_at is not None and alert.attempts == 1 and alert.last_error is None
    assert len(received) == 1 and received[0]["run_id"] == result.run_id
    assert received[0]["url"] == alert.run_url


# -- delivery state, retries on later ticks, and a webhook URL that never leaks ------------

SECRET_PATH = "/services/T000/B000/xoxb-the-secret-path"
WEBHOOK_QUERY = "token=the-secret-query"


class FlakyWebhook:
    """A loopback webhook that answers 503 to its first `failures` POSTs, then 204."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts: list[tuple[str, dict, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 503 if len(outer.posts) < outer.failures else 204
                outer.posts.append((self.path, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}?{WEBHOOK_QUERY}"

    @property
    def delivered(self) -> list[dict]:
        return [body for _, body, status in self.posts if status < 400]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky():
    hooks: list[FlakyWebhook] = []

    def make(failures: int) -> FlakyWebhook:
        hooks.append(FlakyWebhook(failures))
        return hooks[-1]

    yield make
    for hook in hooks:
        hook.close()


def _failed_run(instance: dg.DagsterInstance, app_db: AppDatabase):
    """A run of `predictions` that fails at once (no markets were ingested)."""
    instance.add_dynamic_partitions("models", ["baseline/market"])
    result = dg.materialize(
        [predictions],
        partition_key=partition("baseline/market"),
        instance=instance,
        resources={"app_db": app_db, "forecasters": Forecasters()},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return instance.get_run_by_id(result.run_id), failure


def _evaluate_failure_sensor(instance, run, failure, resources) -> None:
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure,
        resources=resources,
    ).for_run_failure()
    run_failure_alerts(context)


def _alert(engine) -> sa.Row:
    with engine.connect() as conn:
        [row] = conn.execute(sa.select(alerts_table)).all()
    return row


def _leaks(text: str) -> bool:
    return "xoxb-the-secret-path" in text or "the-secret-query" in text or "T000" in text


def test_failed_webhook_post_is_retried_on_a_later_tick(database_url, engine, flaky, caplog, capfd):
    """The webhook fails every HTTP attempt of the first delivery (3 x 503): the alert stays
    undelivered with a redacted reason; the retry sensor's next due tick delivers it, once."""
    hook = flaky(failures=3)
    app_db = AppDatabase(url=database_url)
    settings = AlertSettings(webhook_url=hook.url)
    resources = {"app_db": app_db, "alert_settings": settings}
    caplog.set_level(logging.DEBUG)
    with dg.DagsterInstance.ephemeral() as instance:
        run, failure = _failed_run(instance, app_db)
        _evaluate_failure_sensor(instance, run, failure, resources)  # no exception raised

        row = _alert(engine)
        assert row.delivered_at is None and row.attempts == 1
        assert row.last_error == f"POST {hook.url.split('/services')[0]}/***: HTTP 503"
        assert [status for _, _, status in hook.posts] == [503, 503, 503]

        # The next tick comes too early: the pause after attempt 1 is not over.
        sensor_context = dg.build_sensor_context(instance=instance, resources=resources)
        skip = alert_delivery_retries(sensor_context)
        assert json.loads(skip.skip_message)["waiting"] == 1
        assert len(hook.posts) == 3

        # A later tick, once the pause is over: delivered, exactly once.
        with engine.begin() as conn:
            earlier = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
            conn.execute(sa.update(alerts_table).values(last_attempt_at=earlier))
        skip = alert_delivery_retries(sensor_context)
        assert json.loads(skip.skip_message)["delivered"] == 1
        skip = alert_delivery_retries(sensor_context)  # nothing left to send
        assert json.loads(skip.skip_message) == {
            "delivered": 0,
            "failed": 0,
            "waiting": 0,
            "claimed_elsewhere": 0,
        }

    row = _alert(engine)
    assert row.delivered_at is not None and row.attempts == 2 and row.last_error is None
    assert len(hook.delivered) == 1 and hook.delivered[0]["run_id"] == run.run_id
    assert all(path == f"{SECRET_PATH}?{WEBHOOK_QUERY}" for path, _, _ in hook.posts)
    # The retry warnings (tenacity), httpx's request log and the sensor's warning: no secret.
    # (Dagster's own logger writes the sensor's lines to stderr, not to `logging`.)
    logged = " ".join(r.getMessage() for r in caplog.records) + capfd.readouterr().err
    assert "HTTP retry" in logged and "webhook attempt 1/" in logged
    assert "127.0.0.1" in logged
    assert not _leaks(logged), logged


def test_delivery_attempts_are_bounded(database_url, engine, flaky):
    hook = flaky(failures=10**6)
    app_db = AppDatabase(url=database_url)
    with dg.DagsterInstance.ephemeral() as instance:
        run, failure = _failed_run(instance, app_db)
        _evaluate_failure_sensor(
            instance,
            run,
            failure,
            {"app_db": app_db, "alert_settings": AlertSettings(webhook_url=hook.url)},
        )
    later = dt.datetime.now(dt.UTC)
    for _ in range(alert_service.MAX_ALERT_ATTEMPTS + 3):
        later += dt.timedelta(days=1)
        alert_service.retry_undelivered(engine, WebhookClient(hook.url, sleep=no_sleep), later)
    row = _alert(engine)
    assert row.delivered_at is None
    assert row.attempts == alert_service.MAX_ALERT_ATTEMPTS
    assert len(hook.posts) == alert_service.MAX_ALERT_ATTEMPTS * 3  # 3 HTTP tries each
    assert not _leaks(row.last_error)


def test_unreachable_webhook_error_names_only_the_host(database_url, engine):
    """Connection refused, and an httpx error that embeds the URL: both redacted."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nobody listens there
    url = f"http://127.0.0.1:{port}{SECRET_PATH}?{WEBHOOK_QUERY}"
    client = WebhookClient(url, sleep=no_sleep)
    assert repr(client) == f"WebhookClient('http://127.0.0.1:{port}/***')"
    with pytest.raises(WebhookDeliveryError) as caught:
        client.post({"text": "x"})
    assert f"127.0.0.1:{port}/***" in str(caught.value) and not _leaks(str(caught.value))

    request = httpx.Request("POST", url)
    status_error = httpx.HTTPStatusError(
        f"Server error '503' for url '{url}'", request=request, response=httpx.Response(503)
    )
    assert not _leaks(describe_error(status_error, url))
    assert not _leaks(
        describe_error(httpx.ConnectError(f"cannot reach {url}", request=request), url)
    )
    assert redact_url(url) == f"http://127.0.0.1:{port}/***"
    assert redact_url("https://u:pw@hooks.example.com/") == "https://hooks.example.com"


def test_run_config_cannot_redirect_the_webhook(monkeypatch, database_url, engine, flaky):
    """A run names an attacker's webhook in its config and fails; its alert still goes to the
    webhook of the environment: the sensor uses the Definitions' resources, never a run's."""
    real, attacker = flaky(failures=0), flaky(failures=0)
    monkeypatch.setenv("PREDICTION_PIPELINE_DATABASE_URL", database_url)
    monkeypatch.setenv("PREDICTION_PIPELINE_ALERT_WEBHOOK_URL", real.url)
    resources = default_resources()
    override = {"alert_settings": {"config": {"webhook_url": attacker.url}}}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("models", ["baseline/market"])
        result = dg.materialize(
            [predictions],
            partition_key=partition("baseline/market"),
            instance=instance,
            resources=resources,
            run_config={"resources": override},
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.run_config["resources"] == override
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
        )
        _evaluate_failure_sensor(instance, run, failure, resources)
    assert len(real.delivered) == 1 and attacker.posts == []
    assert real.delivered[0]["run_id"] == result.run_id


def test_one_process_sends_each_attempt(database_url, engine, flaky):
    """The failure sensor and the retry sensor may see the same undelivered alert at once:
    processes that race for one attempt send one POST between them."""
    hook = flaky(failures=0)
    with engine.begin() as conn:
        alert_id = alert_store.record_alert(
            conn,
            run_id="run-1",
            job_name="job",
            partition_key=None,
            error="boom",
            run_url="http://dagster/runs/run-1",
            notified_via="log,webhook",
            deliver=True,
        )
    alert = alert_service.Alert(alert_id, "run-1", "job", None, "boom", "http://dagster/runs/run-1")
    ctx = CONTEXT
    barrier, results = ctx.Barrier(3), ctx.Queue()
    workers = [
        ctx.Process(
            target=deliver_alert,
            args=(database_url, hook.url, alert, barrier, results),
        )
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    outcomes = sorted((results.get(timeout=120) for _ in workers), key=str)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert outcomes.count(True) == 1 and outcomes.count(None) == 2
    assert len(hook.posts) == 1
    row = _alert(engine)
    assert row.attempts == 1 and row.delivered_at is not None
