"""On-demand latency: from a request row inserted to its run started and to the request done.

The web app inserts a `prediction_requests` row and answers at once; a real `dagster-daemon`
does the rest: `prediction_requests_sensor` (minimum_interval_seconds=5) launches a run,
the queued run coordinator dequeues it (every `dequeue_interval_seconds`), the default run
launcher starts a run worker process, and `fulfil_request` predicts with a built-in model (no
network).

Per engine (`--engines sqlite,postgresql`):

- sqlite: Dagster storage SQLite under a temporary DAGSTER_HOME (the repo's `dagster.yaml`)
  and the app database a SQLite file;
- postgresql: the same `dagster.yaml` with dagster-postgres storage in a throwaway database,
  and the app database in another throwaway database on the same server (127.0.0.1:5432,
  or PREDICTION_PIPELINE_TEST_PG_URL); both dropped at the end.

Steps: migrate the app database and ingest today's synthetic markets in-process on the same
instance; run the baseline (below) on `--requests` rows; start the daemon and wait for a
finished tick of the sensor; one warm-up request (not counted); then `--requests` requests
queued through `services.on_demand.request_prediction`, `--spacing` seconds apart on average
(uniformly 0.5-1.5x, seeded, so that rows land at every phase of the sensor's tick),
alternating the built-in models (`--models`). The default spacing (10 s, about one tick
period) measures a request on its own: with rows closer together one tick launches several
runs at once, their run workers compete for the CPUs, and two requests for one model wait for
each other under the per-model run limit (1 run per model at a time in `dagster.yaml`, which
request runs share with the daily batch); `enqueued_while_same_model_ran` and
`overlapping_runs` show how much of that a run met.

Measured per request (epoch seconds, one clock): the row's `created_at`; the tick that
launched its run; the run's RUN_ENQUEUED (the sensor submitted it), RUN_STARTING (the queue
let it go), RUN_START (the run worker began: the run record's start_time); the row's
`finished_at` (succeeded). Reported: min / median / p95 / max of row -> run started and
row -> request succeeded, and the median of each stage.

Compared against, in the same run:

- the scheduling floor of this design: a row waits for the sensor's next tick (uniform over
  the tick period T = minimum_interval_seconds: T/2 on average, T at worst) and the run then
  waits for the queue's next pass (D/2 on average, D at worst); what remains is the run
  worker's start (process, imports, code location load) and the work itself, shown as their
  own stages. The daemon's sensor loop also runs every 5 s (dagster's MIN_INTERVAL_LOOP_TIME)
  and skips a sensor whose last tick began less than its minimum interval ago, so a 5 s sensor
  in fact ticks every 5 or 10 s: the measured tick periods, and the expected wait for a tick
  they imply, are reported next to the floor;
- the serverless approach it replaced, which fired the work off right after the HTTP
  response: here a thread calls the same `fulfil_request` the instant the row is inserted
  (same code path, same app database, no Dagster). That is the latency the old design had,
  and the difference is the price of durable, retried, observable, rate-capped execution.

    .venv/bin/python -m benchmarks.on_demand_latency [--engines sqlite,postgresql]
        [--requests 10] [--spacing 10] [--seed 7]

Prints a table and writes benchmarks/results/on_demand_latency.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from benchmarks.common import git, rounded, text_table
from prediction_pipeline.defs.markets.assets import markets
from prediction_pipeline.defs.on_demand.jobs import prediction_request_job
from prediction_pipeline.defs.on_demand.sensors import REQUEST_TAG
from prediction_pipeline.resources import AppDatabase, Forecasters, MarketSourceResource
from prediction_pipeline.services import on_demand
from prediction_pipeline.store import migrate, queue_items
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import requests as request_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import predictions
from prediction_pipeline_tests.daemon_harness import (
    PG_ADMIN_URL,
    REPO,
    Services,
    cli,
    daemon_command,
    failure_report,
    instance_config,
    open_instance,
    postgres_database,
    postgres_storage,
    run_event_times,
    sensor_ticks,
    service_env,
    wait_for_sensor_ticks,
    wait_until,
    write_instance_yaml,
)
from prediction_pipeline_tests.fakes.openrouter_server import FakeOpenRouterServer

IN_PROGRESS = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
RESULTS_PATH = Path(__file__).parent / "results" / "on_demand_latency.json"
SENSOR = "prediction_requests_sensor"
ENGINES = ("sqlite", "postgresql")
STARTUP_TIMEOUT = 120.0
REQUEST_TIMEOUT = 180.0
EVENTS = (
    dg.DagsterEventType.RUN_ENQUEUED,
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
)


@dataclass(frozen=True)
class Settings:
    engines: tuple[str, ...] = ENGINES
    requests: int = 10
    spacing: float = 10.0
    models: tuple[str, ...] = ("baseline/momentum", "baseline/market")
    warmup: int = 1
    seed: int = 7
    synthetic_size: int = 60
    # An OpenRouter model on the stand-in provider instead of the built-in models: its latency
    # (s); the provider enforces the model's limits strictly (no burst, in-flight cap).
    provider_latency: float | None = None
    rps: float = 2.0
    max_in_flight: int = 4
    # The daily batch of the same model running (through the run queue) while requests come.
    batch: bool = False
    batch_markets: int = 300


# -- helpers --------------------------------------------------------------------------------


def epoch(value: dt.datetime | None) -> float | None:
    """Epoch seconds of a stored UTC timestamp (SQLite hands them back naive)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (q in [0, 100])."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def uniform_sum_quantile(a: float, b: float, q: float) -> float:
    """The q-quantile (0..1) of U(0, a) + U(0, b): the two independent waits of a row."""
    a, b = max(a, b), min(a, b)
    if b == 0:
        return q * a

    def cdf(s: float) -> float:
        if s <= b:
            return s * s / (2 * a * b)
        if s <= a:
            return (2 * s - b) / (2 * a)
        return 1 - (a + b - s) ** 2 / (2 * a * b)

    low, high = 0.0, a + b
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < q else (low, mid)
    return (low + high) / 2


def summary(values: list[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "max": max(values),
    }


def ingest_markets(app_url: str, instance: dg.DagsterInstance, days: int, size: int) -> None:
    """`markets` for the `days` days up to today (synthetic), quietly, on `instance`."""
    today = dt.datetime.now(dt.UTC).date()
    resources = {
        "app_db": AppDatabase(url=app_url),
        "market_source": MarketSourceResource(synthetic_size=size),
    }
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    for offset in range(days - 1, -1, -1):
        day = (today - dt.timedelta(days=offset)).isoformat()
        result = dg.materialize(
            [markets], partition_key=day, resources=resources, instance=instance, run_config=quiet
        )
        assert result.success, f"markets {day} failed"


BENCH_USER = "bench@example.com"


def request(engine: sa.Engine, market_id: int, model: str) -> str:
    """Queue one request for the benchmark's user, with the one credit it costs."""
    on_demand.grant(engine, BENCH_USER, 1)
    return on_demand.request_prediction(engine, market_id, model, user_email=BENCH_USER)


def batch_predictions(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).where(predictions.c.origin == "batch"))


def request_row(engine: sa.Engine, request_id: str) -> sa.Row:
    with engine.connect() as conn:
        return request_store.get_request(conn, request_id)


def finished(engine: sa.Engine, request_id: str) -> sa.Row | None:
    row = request_row(engine, request_id)
    return row if row.status in queue_items.REQUEST_FINAL else None


# -- the baseline: the serverless design's fire-and-forget ----------------------------------


def fire_and_forget(
    engine: sa.Engine, market_ids: list[int], settings: Settings, forecasters: Forecasters
) -> list[dict[str, float]]:
    """Insert each row, then call `fulfil_request` in a thread at once, as the old design
    fired work off right after the HTTP response; no daemon runs meanwhile."""
    measured = []
    for index in range(settings.requests):
        model = settings.models[index % len(settings.models)]
        request_id = request(engine, market_ids[index % len(market_ids)], model)
        worker = threading.Thread(
            target=on_demand.fulfil_request,
            args=(engine, forecasters.build, forecasters.fatal_errors(), request_id, "serverless"),
        )
        worker.start()
        worker.join()
        row = request_row(engine, request_id)
        assert row.status == queue_items.SUCCEEDED, (row.status, row.error)
        created = epoch(row.created_at)
        measured.append(
            {
                "to_started": epoch(row.started_at) - created,
                "to_succeeded": epoch(row.finished_at) - created,
            }
        )
    return measured


# -- one engine -----------------------------------------------------------------------------


PROVIDER_KEY = "sk-bench-on-demand"
PROVIDER_MODEL = "acme/bench-1"


def launch_batch(env: dict[str, str], model: str, markets: int) -> str:
    """Submit today's predictions run of `model` to the run queue with the tags its schedule
    gives it (so the per-model run limit applies to it); returns its run id."""
    day = dt.datetime.now(dt.UTC).date().isoformat()
    tags = {
        "dagster/partition": f"{day}|{model}",
        "dagster/partition/day": day,
        "dagster/partition/model": model,
    }
    run_id = str(uuid.uuid4())
    command = cli("dagster", "dagster") + [
        "job", "launch", "-w", "workspace.yaml", "-j", "predictions_job",
        "--tags", json.dumps(tags), "--run-id", run_id, "--config-json",
        json.dumps({"ops": {"predictions": {"config": {"top_markets_count": markets}}}}),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return run_id


def run_engine(name: str, settings: Settings, rng: random.Random) -> dict[str, Any]:
    started = time.perf_counter()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-od-{name}-")))
        home = tmp / "dagster_home"
        if name == "postgresql":
            dagster_url = stack.enter_context(postgres_database("pp_bench_dagster"))
            app_url = stack.enter_context(postgres_database("pp_bench_app"))
            config = instance_config(storage=postgres_storage(dagster_url))
        else:
            app_url = f"sqlite:///{tmp / 'app.db'}"
            config = instance_config()
        write_instance_yaml(home, config)
        dequeue_interval = float(config["run_coordinator"]["config"]["dequeue_interval_seconds"])
        engine = make_engine(app_url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine)
        instance = stack.enter_context(open_instance(home))
        # Enough markets in the end-date window for the batch (about 4 in 10 fall in it).
        size = max(settings.synthetic_size, 3 * settings.batch_markets if settings.batch else 0)
        # Through a throwaway instance: materialized on the daemon's, today's markets would
        # start the daily chain (pipeline_automation) beside the measured batch and requests.
        ingest_markets(app_url, dg.DagsterInstance.ephemeral(), days=3, size=size)
        with engine.connect() as conn:
            market_ids = list(
                conn.scalars(sa.text("SELECT id FROM markets WHERE status = 'open' ORDER BY id"))
            )
        variables = {}
        server = None
        forecasters = Forecasters()
        if settings.provider_latency is not None:
            server = stack.enter_context(
                FakeOpenRouterServer(
                    api_key=PROVIDER_KEY,
                    rate_limit=settings.rps,
                    burst=1,
                    max_in_flight=settings.max_in_flight,
                    latency_mean=settings.provider_latency,
                    latency_sigma=0.2,
                )
            )
            with engine.begin() as conn:
                model_store.upsert_model(
                    conn,
                    model_store.ModelSpec(
                        PROVIDER_MODEL,
                        model_store.OPENROUTER_PROVIDER,
                        requests_per_second=settings.rps,
                        max_in_flight=settings.max_in_flight,
                    ),
                )
            instance.add_dynamic_partitions("models", [PROVIDER_MODEL])
            variables = {"OPENROUTER_API_KEY": PROVIDER_KEY, "OPENROUTER_BASE_URL": server.base_url}
            forecasters = Forecasters(
                openrouter_api_key=PROVIDER_KEY, openrouter_base_url=server.base_url
            )

        baseline = fire_and_forget(engine, market_ids, settings, forecasters)

        env = service_env(
            home,
            PREDICTION_PIPELINE_DATABASE_URL=app_url,
            PREDICTION_PIPELINE_DATA_DIR=str(tmp / "data"),
            **variables,
        )
        services = Services(stack, env, tmp)
        services.start("daemon", daemon_command())
        try:
            daemon_started = time.time()
            wait_for_sensor_ticks(instance, SENSOR, 1, timeout=STARTUP_TIMEOUT, services=services)
            ready_s = time.time() - daemon_started
            for index in range(settings.warmup):
                warm = request(engine, market_ids[-1 - index], settings.models[0])
                wait_until(
                    lambda warm=warm: finished(engine, warm),
                    timeout=REQUEST_TIMEOUT,
                    services=services,
                    what=f"warm-up request {warm}",
                )

            wait_until(
                lambda: (
                    not instance.get_runs(
                        filters=dg.RunsFilter(statuses=list(IN_PROGRESS)), limit=1
                    )
                ),
                timeout=REQUEST_TIMEOUT,
                services=services,
                what="the warm-up runs to end",
            )
            batch_id = None
            if settings.batch:
                batch_id = launch_batch(env, settings.models[0], settings.batch_markets)
                wait_until(
                    lambda: batch_predictions(engine) > 0,
                    timeout=REQUEST_TIMEOUT,
                    services=services,
                    what="the batch's first prediction",
                )
            if server is not None:
                server.reset()
            window_start = time.time()
            request_ids = []
            for index in range(settings.requests):
                if index:
                    time.sleep(settings.spacing * rng.uniform(0.5, 1.5))
                model = settings.models[index % len(settings.models)]
                market = market_ids[(index + len(settings.models)) % len(market_ids)]
                request_ids.append(request(engine, market, model))
            for request_id in request_ids:
                wait_until(
                    lambda r=request_id: finished(engine, r),
                    timeout=REQUEST_TIMEOUT,
                    services=services,
                    what=lambda r=request_id: f"request {r}: {request_row(engine, r)}",
                )
            rows = [measure(instance, engine, request_id, services) for request_id in request_ids]
            ticks = sensor_ticks(instance, SENSOR, after=window_start)
            batch_info = None
            if batch_id is not None:
                batch_running = not instance.get_run_by_id(batch_id).is_finished
                record = wait_until(
                    lambda: (
                        (r := instance.get_run_records(dg.RunsFilter(run_ids=[batch_id])))
                        and r[0].dagster_run.is_finished
                        and r[0]
                    ),
                    timeout=1800,
                    services=services,
                    what="the batch to end",
                )
                batch_info = {
                    "status": record.dagster_run.status.value,
                    "running_when_requests_were_done": batch_running,
                    "predictions": batch_predictions(engine),
                    "requests_done_before_batch_end": sum(
                        r["at"]["succeeded"] <= record.end_time for r in rows
                    ),
                }
            provider = None
            if server is not None:
                outcomes = dict(server.counts)
                calls = sum(outcomes.values())
                rejected = outcomes.get("429_rate", 0) + outcomes.get("429_in_flight", 0)
                provider = {
                    "calls_while_measured": calls,
                    "outcomes": outcomes,
                    "share_429": rejected / calls if calls else 0.0,
                    "max_in_flight_seen": server.max_in_flight_seen,
                }
        except BaseException:
            services.print_logs()
            raise
        tick_times = [t.timestamp for t in ticks]
        tick_periods = [b - a for a, b in zip(tick_times, tick_times[1:], strict=False)]
    return {
        "engine": name,
        "dagster_storage": "postgres" if name == "postgresql" else "sqlite",
        "app_database": "postgresql" if name == "postgresql" else "sqlite",
        "dequeue_interval_seconds": dequeue_interval,
        "daemon_ready_s": ready_s,
        "sensor_tick_period_s": summary(tick_periods) if tick_periods else None,
        # The mean wait for the next tick of a row inserted at a random moment, given the
        # periods measured: E[P^2] / (2 E[P]) (longer periods catch more rows).
        "tick_wait_expected_s": sum(p * p for p in tick_periods) / (2 * sum(tick_periods))
        if tick_periods
        else None,
        "requests": rows,
        "stats": {
            key: summary([r[key] for r in rows])
            for key in (
                "to_run_started",
                "to_succeeded",
                "to_run_ended",
                "stage_wait_for_tick",
                "stage_tick_to_enqueued",
                "stage_dequeue_wait",
                "stage_worker_start",
                "stage_execution",
            )
        },
        "enqueued_while_same_model_ran": same_model_busy(rows),
        "batch": batch_info,
        "provider": provider,
        "overlapping_runs": summary(overlapping_runs(rows)),
        "baseline_fire_and_forget": {
            "to_started": summary([b["to_started"] for b in baseline]),
            "to_succeeded": summary([b["to_succeeded"] for b in baseline]),
        },
        "wall_s": time.perf_counter() - started,
    }


def measure(
    instance: dg.DagsterInstance, engine: sa.Engine, request_id: str, services: Services
) -> dict[str, Any]:
    """One request's timeline, once its run has ended."""

    def ended() -> list:
        records = instance.get_run_records(filters=dg.RunsFilter(tags={REQUEST_TAG: request_id}))
        return records if records and all(r.dagster_run.is_finished for r in records) else []

    records = wait_until(
        ended, timeout=REQUEST_TIMEOUT, services=services, what=f"the run of {request_id}"
    )
    assert len(records) == 1, f"request {request_id} has {len(records)} runs"
    (record,) = records
    run = record.dagster_run
    assert run.status == dg.DagsterRunStatus.SUCCESS, failure_report(instance, records)
    assert run.job_name == prediction_request_job.name
    row = request_row(engine, request_id)
    assert row.status == queue_items.SUCCEEDED, (row.status, row.error)
    events = run_event_times(instance, run.run_id, EVENTS)
    launching = [
        t
        for t in sensor_ticks(instance, SENSOR, after=epoch(row.created_at) - 60)
        if run.run_id in t.run_ids
    ]
    created = epoch(row.created_at)
    enqueued = events[dg.DagsterEventType.RUN_ENQUEUED]
    starting = events[dg.DagsterEventType.RUN_STARTING]
    run_start = record.start_time or events[dg.DagsterEventType.RUN_START]
    tick = launching[0].timestamp if launching else enqueued
    succeeded = epoch(row.finished_at)
    return {
        "request_id": request_id,
        "model": row.model_slug,
        "run_id": run.run_id,
        "at": {  # epoch seconds
            "created": created,
            "tick": tick,
            "enqueued": enqueued,
            "starting": starting,
            "run_start": run_start,
            "succeeded": succeeded,
            "run_end": record.end_time,
        },
        "to_run_started": run_start - created,
        "to_succeeded": succeeded - created,
        "to_run_ended": record.end_time - created,
        "stage_wait_for_tick": tick - created,  # the row waits for the sensor's next tick
        "stage_tick_to_enqueued": enqueued - tick,  # evaluation, run creation, submission
        "stage_dequeue_wait": starting - enqueued,  # the queue's next pass (and its limits)
        "stage_worker_start": run_start - starting,  # process, imports, code location load
        "stage_execution": succeeded - run_start,  # the op: context, prediction, storage
    }


def overlapping_runs(rows: list[dict[str, Any]]) -> list[int]:
    """For each run: how many other runs were between RUN_STARTING and their end while its
    own worker started (they compete for the CPUs)."""
    return [
        sum(
            other is not row
            and other["at"]["starting"] < row["at"]["run_start"]
            and other["at"]["run_end"] > row["at"]["starting"]
            for other in rows
        )
        for row in rows
    ]


def same_model_busy(rows: list[dict[str, Any]]) -> int:
    """Runs enqueued while another run of their model was between RUN_STARTING and its end:
    the per-model run limit may have held them (not wanted here: the models alternate)."""
    return sum(
        any(
            other is not row
            and other["model"] == row["model"]
            and other["at"]["starting"] <= row["at"]["enqueued"] < other["at"]["run_end"]
            for other in rows
        )
        for row in rows
    )


# -- report ---------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    header = ("engine", "latency from row inserted", "n", "min s", "median s", "p95 s", "max s")
    rows = []
    for engine in result["engines"]:
        name = engine["engine"]
        for label, key in (
            ("-> run started (RUN_START)", "to_run_started"),
            ("-> request succeeded", "to_succeeded"),
        ):
            rows.append((name, label, engine["stats"][key]))
        floor = engine["scheduling_floor_s"]
        rows.append((name, "   floor: tick + dequeue wait", {"n": "", "min": 0.0, **floor}))
        fire = engine["baseline_fire_and_forget"]
        rows.append((name, "   serverless fire-and-forget: started", fire["to_started"]))
        rows.append((name, "   serverless fire-and-forget: succeeded", fire["to_succeeded"]))

    def cells(name: str, label: str, s: dict) -> tuple[str, ...]:
        def f(value: Any) -> str:
            return f"{value:.2f}" if isinstance(value, float | int) else str(value)

        return (name, label, str(s["n"]), f(s["min"]), f(s["median"]), f(s["p95"]), f(s["max"]))

    return text_table(header, [cells(*row) for row in rows], left_columns=2)


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"{s['requests']} requests per engine (+{s['warmup']} warm-up), inserted "
        f"{s['spacing']:g} s apart on average (0.5-1.5x, seed {s['seed']}), models "
        f"{', '.join(s['models'])} in turn; sensor minimum_interval_seconds "
        f"{result['sensor_interval_seconds']}, daemon sensor loop "
        f"{result['sensor_loop_seconds']} s"
    )
    print()
    print(table(result))
    print()
    for engine in result["engines"]:
        st = engine["stats"]
        tick = engine["sensor_tick_period_s"]
        print(
            f"{engine['engine']}: dequeue interval {engine['dequeue_interval_seconds']:g} s; "
            f"measured tick period min/median/max {tick['min']:.2f}/{tick['median']:.2f}/"
            f"{tick['max']:.2f} s (expected wait for a tick {engine['tick_wait_expected_s']:.2f} "
            f"s, floor assumes {result['sensor_interval_seconds'] / 2:g}); "
            f"stage medians: wait for tick {st['stage_wait_for_tick']['median']:.2f} s, "
            f"tick -> enqueued {st['stage_tick_to_enqueued']['median']:.2f} s, dequeue wait "
            f"{st['stage_dequeue_wait']['median']:.2f} s, worker start "
            f"{st['stage_worker_start']['median']:.2f} s, execution "
            f"{st['stage_execution']['median']:.2f} s; enqueued while the same model ran "
            f"{engine['enqueued_while_same_model_ran']}, other runs met at worker start max "
            f"{engine['overlapping_runs']['max']}; daemon ready after "
            f"{engine['daemon_ready_s']:.1f} s; engine wall {engine['wall_s']:.0f} s"
        )
    for engine in result["engines"]:
        if engine.get("batch"):
            print(f"{engine['engine']}: batch of the same model meanwhile: {engine['batch']}")
        if engine.get("provider"):
            print(f"{engine['engine']}: stand-in provider while measured: {engine['provider']}")
    print(
        "floor: the wait for the sensor's tick, U(0, T), plus the wait for the queue's pass, "
        f"U(0, D), with T = {result['sensor_interval_seconds']} s the sensor's "
        "minimum_interval_seconds and D the dequeue interval: median (T + D)/2, max T + D; "
        "the run worker's start and the work come on top"
    )
    env = result["environment"]
    print(
        f"total {result['total_wall_s']} s; load average {env['load_average_1m_before']} -> "
        f"{env['load_average_1m_after']} on {env['cpus']} CPUs"
    )


def run(settings: Settings, argv: list[str]) -> dict[str, Any]:
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    from prediction_pipeline.defs.on_demand.sensors import prediction_requests_sensor

    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    rng = random.Random(settings.seed)
    engines = []
    interval = float(prediction_requests_sensor.minimum_interval_seconds)
    for name in settings.engines:
        engine = run_engine(name, settings, rng)
        dequeue = engine["dequeue_interval_seconds"]
        # The design's floor: a row inserted at a random moment waits U(0, T) for the sensor's
        # tick (T its minimum_interval_seconds), then U(0, D) for the queue's pass.
        engine["scheduling_floor_s"] = {
            "median": uniform_sum_quantile(interval, dequeue, 0.5),
            "p95": uniform_sum_quantile(interval, dequeue, 0.95),
            "max": interval + dequeue,
        }
        engines.append(engine)
    return {
        "benchmark": "on_demand_latency",
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.on_demand_latency " + " ".join(argv),
        "settings": {**settings.__dict__, "engines": list(settings.engines)},
        "sensor_interval_seconds": prediction_requests_sensor.minimum_interval_seconds,
        "sensor_loop_seconds": MIN_INTERVAL_LOOP_TIME,
        "environment": {
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "git_dirty_paths": [
                line.split(maxsplit=1)[-1]
                for line in (
                    git("status", "--porcelain", "--", "prediction_pipeline") or ""
                ).splitlines()
            ],
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "dagster": dg.__version__,
            "postgres": sa.engine.make_url(PG_ADMIN_URL).render_as_string(hide_password=True)
            if "postgresql" in settings.engines
            else None,
            "load_average_1m_before": load_before,
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        },
        "engines": engines,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: list[str]) -> tuple[Settings, Path]:
    d = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.on_demand_latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--engines", default=",".join(d.engines), help="sqlite,postgresql")
    parser.add_argument("--requests", type=int, default=d.requests, help="N requests")
    parser.add_argument("--spacing", type=float, default=d.spacing, help="mean s between rows")
    parser.add_argument("--models", default=",".join(d.models), help="built-in models, in turn")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="uncounted first requests")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--provider-latency",
        type=float,
        default=None,
        help="use an OpenRouter model on the strict stand-in provider with this latency (s)",
    )
    parser.add_argument("--batch-markets", type=int, default=d.batch_markets)
    parser.add_argument("--rps", type=float, default=d.rps, help="that model's requests/s")
    parser.add_argument("--max-in-flight", type=int, default=d.max_in_flight)
    parser.add_argument(
        "--batch", action="store_true", help="run that model's daily batch meanwhile"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results path")
    args = parser.parse_args(argv)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines or set(engines) - set(ENGINES):
        parser.error(f"--engines takes {', '.join(ENGINES)}")
    if args.requests < 1 or args.spacing < 0 or args.warmup < 0:
        parser.error("--requests >= 1, --spacing >= 0, --warmup >= 0")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.provider_latency is not None:
        models = (PROVIDER_MODEL,)
    elif args.batch:
        parser.error("--batch needs --provider-latency (a batch of a built-in model is instant)")
    settings = Settings(
        provider_latency=args.provider_latency,
        rps=args.rps,
        max_in_flight=args.max_in_flight,
        batch=args.batch,
        batch_markets=args.batch_markets,
        engines=engines,
        requests=args.requests,
        spacing=args.spacing,
        models=models or d.models,
        warmup=args.warmup,
        seed=args.seed,
    )
    return settings, args.output


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings, output = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    result = rounded(run(settings, argv))
    print_report(result)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
