"""End to end with a real `dagster-daemon`: the daily chain after markets, started by the data.

`test_automation.py` evaluates the conditions tick by tick; here the daemon does it, as in
production: its sensor loop evaluates `pipeline_automation` (declared RUNNING, in the code
server), the queued run coordinator dequeues the runs, a run worker executes each.

1. a temporary DAGSTER_HOME with the repo's `dagster.yaml`; an app database (SQLite file) with
   two days of synthetic markets before today, the two built-in models (enabled) and one
   OpenRouter model that is disabled (no key, no network needed);
2. `dagster-daemon run -w workspace.yaml`; the test waits for the sensor's first tick (the
   sensor notes where things stand: nothing before it counts as new);
3. today's markets are materialized (as `markets_daily` would): the daemon then runs, one tick
   after the other, today's predictions of each enabled model, the day's deltas, the day's
   digests (and scores + leaderboard if markets resolved today);
4. once the digests are in, the next tick requests nothing: one run per step, no run for the
   disabled model, every run a success.

Waits on states (materializations, runs, ticks), never on durations.
"""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack

import dagster as dg
import pytest

from prediction_pipeline.defs.automation import automation_sensor
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline_tests.daemon_harness import (
    Services,
    daemon_command,
    failure_report,
    instance_config,
    open_instance,
    service_env,
    wait_for_sensor_ticks,
    wait_until,
    write_instance_yaml,
)
from prediction_pipeline_tests.pipeline_helpers import ingest_days

pytestmark = pytest.mark.daemon

SENSOR = automation_sensor.name
ENABLED = ["baseline/market", "baseline/momentum"]
DISABLED = "acme/disabled-1"
SYNTHETIC_SIZE = 40
STARTUP_TIMEOUT = 90.0
CHAIN_TIMEOUT = 180.0  # four sensor ticks and three waves of run workers on a busy machine


def latest_materialization(instance: dg.DagsterInstance, asset: str, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]),
        limit=1,
        ascending=False,
    ).records
    return records[0] if records else None


def automation_runs(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    """Runs the automation sensor launched (the test's own markets runs are not)."""
    return [
        r
        for r in instance.get_run_records()
        if r.dagster_run.tags.get("dagster/sensor_name") == SENSOR
        or "dagster/from_automation_condition" in r.dagster_run.tags
    ]


def test_markets_start_the_chain_once(tmp_path):
    home = tmp_path / "dagster_home"
    write_instance_yaml(home, instance_config(dequeue_interval_seconds=1))
    app_url = f"sqlite:///{tmp_path / 'app.db'}"
    today = dt.datetime.now(dt.UTC).date()
    with ExitStack() as stack:
        engine = make_engine(app_url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            model_store.upsert_model(
                conn,
                model_store.ModelSpec(DISABLED, model_store.OPENROUTER_PROVIDER, enabled=False),
            )
        instance = stack.enter_context(open_instance(home))
        instance.add_dynamic_partitions("models", [*ENABLED, DISABLED])
        ingest_days(
            app_url, instance, days=2, end=today - dt.timedelta(days=1), size=SYNTHETIC_SIZE
        )
        env = service_env(
            home,
            PREDICTION_PIPELINE_DATABASE_URL=app_url,
            PREDICTION_PIPELINE_DATA_DIR=str(tmp_path / "data"),
        )
        services = Services(stack, env, tmp_path)
        services.start("daemon", daemon_command())
        try:
            # Declared RUNNING in code: no one switches it on.
            wait_for_sensor_ticks(instance, SENSOR, 1, timeout=STARTUP_TIMEOUT, services=services)

            ingest_days(app_url, instance, days=1, end=today, size=SYNTHETIC_SIZE)
            resolved = latest_materialization(instance, "markets", today.isoformat())
            resolved = resolved.asset_materialization.metadata["resolved"].value

            def digests_in():
                return latest_materialization(instance, "watchlist_digests", today.isoformat())

            digests = wait_until(
                digests_in,
                timeout=CHAIN_TIMEOUT,
                services=services,
                what=lambda: f"digests: {failure_report(instance, automation_runs(instance))}",
            )

            # The next tick after the digests landed requests nothing more.
            wait_for_sensor_ticks(
                instance,
                SENSOR,
                1,
                after=digests.timestamp,
                timeout=STARTUP_TIMEOUT,
                services=services,
            )
        except BaseException:
            services.print_logs()
            raise

        records = automation_runs(instance)
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), (
            failure_report(instance, records)
        )
        runs = [r.dagster_run for r in records]
        targets = sorted(
            (
                ", ".join(sorted(k.to_user_string() for k in run.asset_selection or [])),
                run.tags.get("dagster/partition"),
            )
            for run in runs
        )
        expected = [
            *[("predictions", f"{today}|{m}") for m in ENABLED],
            ("prediction_deltas", today.isoformat()),
            ("watchlist_digests", today.isoformat()),
        ]
        if resolved:
            expected.append(("forecast_scores, model_leaderboard", None))
        assert targets == sorted(expected), targets
        # Each (day, model) run carries its model tag: the run queue's per-model limit applies.
        models = sorted(
            run.tags["dagster/partition/model"]
            for run in runs
            if run.asset_selection == {dg.AssetKey("predictions")}
        )
        assert models == ENABLED
