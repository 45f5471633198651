"""A failed run produces exactly one alert: a row, a log line and one webhook POST."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.defs.on_demand.sensors import run_failure_alerts
from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.resources import AlertSettings, AppDatabase, Forecasters
from prediction_pipeline.store.tables import run_failure_alerts as alerts_table
from prediction_pipeline_tests.pipeline_helpers import partition


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
    with dg.instance_for_test() as instance:
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
    assert len(received) == 1 and received[0]["run_id"] == result.run_id
    assert received[0]["url"] == alert.run_url
