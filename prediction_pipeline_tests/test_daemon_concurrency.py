"""End to end with a real `dagster-daemon`: the per-model run limit of the instance config.

The repo's `dagster.yaml` caps runs per value of `dagster/partition/model` at 1 while
different models run side by side. Dagster's own tests check the queue's tag limits without
real runs; this one proves them on the real thing:

1. a temporary DAGSTER_HOME with a `dagster.yaml` derived from the repo's (same `concurrency`
   section; a shorter dequeue interval and monitoring poll so the test is quick);
2. an app database (SQLite file) migrated to head, 2 days of synthetic markets ingested
   in-process, 3 OpenRouter models registered and added as `models` partitions;
3. the fake OpenRouter server on loopback, with latency, so each run lasts a few seconds;
4. `dagster-webserver` and `dagster-daemon` as subprocesses over `workspace.yaml`; a backfill
   of `predictions` for 3 models x 2 days launched through GraphQL exactly as the UI's
   "Materialize" dialog does (`launchPartitionBackfill`, asset selection + partition names);
5. once the backfill's runs have ended: 6 successful runs, one per partition, correctly tagged; no
   two runs of one model in progress at once (from the queue letting one go, RUN_STARTING,
   to its end); runs of different models did execute side by side; a run was passed over in
   the queue while its model was busy; every (market, model, day) prediction stored exactly
   once; the fake saw one request each.

The per-model limit must be what keeps a model's runs apart, not luck in the queue's order:
the backfill queues the runs day by day (each day's 3 models in turn), and with equally fast
models plain FIFO would already alternate the models. So acme/alpha is made slow (its
registry request rate): beta's and gamma's first runs end while alpha's still runs, and the
queue has to pass over alpha's next run (queued earlier) to start theirs. The test asserts
that this happened; with the limit removed from dagster.yaml, alpha's runs overlap and it
fails.

The daemon starts right after the launch, so its first backfill iteration (the loop sleeps
30 s between iterations) submits the runs at once. The test waits for the runs, not for the
backfill's status: the daemon marks the backfill complete only at its next iteration, up to
30 s after the last run ended; the backfill must then be in progress or complete, never failed.

Instance storage stays SQLite, as in the repo's `dagster.yaml`: the limits keep at most 3
runs in flight here (one per model), which SQLite's per-run event-log shards handle without
lock errors; PostgreSQL instance storage is for production (`deploy/`), not needed to prove
the queue's rule.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus

from prediction_pipeline.core.selection import select_markets
from prediction_pipeline.defs.markets.assets import markets
from prediction_pipeline.defs.predictions.config import PredictionsConfig
from prediction_pipeline.resources import AppDatabase, MarketSourceResource
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import prediction_failures
from prediction_pipeline.store.tables import predictions as predictions_table
from prediction_pipeline_tests.daemon_harness import (
    Services,
    daemon_command,
    failure_report,
    free_port,
    graphql,
    instance_config,
    open_instance,
    service_env,
    wait_for_location,
    wait_until,
    webserver_command,
)
from prediction_pipeline_tests.daemon_harness import (
    write_instance_yaml as write_config,
)
from prediction_pipeline_tests.fakes.openrouter_server import FakeOpenRouterServer

pytestmark = pytest.mark.daemon

DAYS = ("2026-11-02", "2026-11-03")
MODELS = ("acme/alpha", "acme/beta", "acme/gamma")
API_KEY = "sk-or-test-daemon"
MODEL_TAG, DAY_TAG = "dagster/partition/model", "dagster/partition/day"
PARTITION_TAG, BACKFILL_TAG = "dagster/partition", "dagster/backfill"
# About 42 of 100 synthetic markets fall in the default end-date window. Answers take ~0.2 s
# with 2 calls in flight; the request rate sets each model's pace: ~28 s of calls a run for
# acme/alpha, ~5 s for the others, after several seconds of process start-up (at 3/s, ~14 s,
# a loaded machine's start-ups blurred the difference and no run was passed over, once).
SYNTHETIC_SIZE = 100
LATENCY_MEAN = 0.2
MAX_IN_FLIGHT = 2
REQUESTS_PER_SECOND = {"acme/alpha": 1.5, "acme/beta": 10.0, "acme/gamma": 10.0}
RUNS_TIMEOUT = 240.0

# What the UI's LaunchAssetChoosePartitionsDialog sends (ui-core BackfillUtils.tsx).
LAUNCH_PARTITION_BACKFILL_MUTATION = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConfigValidationInvalid { pipelineName errors { message path reason } }
    ... on PythonError { message stack }
  }
}
"""


# -- the instance -----------------------------------------------------------------------------


def write_instance_yaml(home: Path) -> dict:
    """The repo's dagster.yaml with its `concurrency` section untouched; only the queue's
    dequeue interval and run monitoring's poll interval are shortened."""
    config = instance_config(dequeue_interval_seconds=1, monitoring_poll_seconds=5)
    rule = {"key": MODEL_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    assert rule in config["concurrency"]["runs"]["tag_concurrency_limits"], (
        "dagster.yaml no longer caps runs per model: the test below proves that cap"
    )
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= len(MODELS)
    return write_config(home, config)


# -- overlap arithmetic -----------------------------------------------------------------------


def max_concurrency(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one moment; one ending exactly when another starts is not an
    overlap (ends sort before starts at the same timestamp)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@dataclass(frozen=True)
class RunSpan:
    """One run's life, as epoch seconds from its events."""

    model: str
    partition: str
    queued: float  # RUN_ENQUEUED: the backfill put it in the queue
    launched: float  # RUN_STARTING: the queue let it go (it now counts against the limits)
    start: float  # RUN_START: the run worker began executing
    end: float  # RUN_SUCCESS

    @classmethod
    def of(cls, instance: dg.DagsterInstance, record) -> RunSpan:
        run = record.dagster_run

        def at(event_type: dg.DagsterEventType) -> float:
            (entry,) = instance.all_logs(run.run_id, of_type=event_type)
            return entry.timestamp

        return cls(
            model=run.tags[MODEL_TAG],
            partition=run.tags[PARTITION_TAG],
            queued=at(dg.DagsterEventType.RUN_ENQUEUED),
            launched=at(dg.DagsterEventType.RUN_STARTING),
            start=record.start_time,
            end=record.end_time,
        )


def held_back_runs(runs: list[RunSpan]) -> list[tuple[RunSpan, RunSpan]]:
    """(early, late): `early` was queued before `late` but launched after it, and when `late`
    was launched another run of `early`'s model was in progress: the queue passed `early`
    over because of its model."""
    found = []
    for early in runs:
        for late in runs:
            if not (early.queued < late.queued and late.launched < early.launched):
                continue
            busy = any(
                other.model == early.model and other.launched <= late.launched < other.end
                for other in runs
            )
            if busy:
                found.append((early, late))
    return found


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def services() -> Iterator[ExitStack]:
    """Everything started by the test is stopped here, failure or not."""
    with ExitStack() as stack:
        yield stack


def test_backfill_runs_one_partition_per_model_at_a_time(tmp_path, services):
    test_started = time.monotonic()
    home = tmp_path / "dagster_home"
    config = write_instance_yaml(home)
    app_url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(app_url)
    services.callback(engine.dispose)
    migrate.upgrade(engine)

    # Markets for 2 days and 3 OpenRouter models, on the instance the daemon will use.
    instance = services.enter_context(open_instance(home))
    resources = {
        "app_db": AppDatabase(url=app_url),
        "market_source": MarketSourceResource(synthetic_size=SYNTHETIC_SIZE),
    }
    for day in DAYS:
        result = dg.materialize(
            [markets], partition_key=day, resources=resources, instance=instance
        )
        assert result.success
    with engine.begin() as conn:
        for slug in MODELS:
            model_store.upsert_model(
                conn,
                model_store.ModelSpec(
                    slug=slug,
                    provider=model_store.OPENROUTER_PROVIDER,
                    max_in_flight=MAX_IN_FLIGHT,
                    requests_per_second=REQUESTS_PER_SECOND[slug],
                ),
            )
    instance.add_dynamic_partitions("models", list(MODELS))
    expected = expected_markets(engine)

    server = services.enter_context(
        FakeOpenRouterServer(api_key=API_KEY, latency_mean=LATENCY_MEAN, seed=3)
    )
    env = service_env(
        home,
        PREDICTION_PIPELINE_DATABASE_URL=app_url,
        PREDICTION_PIPELINE_DATA_DIR=str(tmp_path / "data"),
        OPENROUTER_API_KEY=API_KEY,
        OPENROUTER_BASE_URL=server.base_url,
    )
    port = free_port()
    started = Services(services, env, tmp_path)

    try:
        webserver = started.start("webserver", webserver_command(port))
        client = services.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
        )
        wait_for_location(client, webserver)

        # The daemon starts after the launch so that its first backfill iteration picks the
        # backfill up at once (the backfill loop otherwise sleeps 30 s between iterations).
        partition_names = [f"{day}|{model}" for day in DAYS for model in MODELS]
        launched = graphql(
            client,
            LAUNCH_PARTITION_BACKFILL_MUTATION,
            {
                "backfillParams": {
                    "tags": [],
                    "assetSelection": [{"path": ["predictions"]}],
                    "partitionNames": partition_names,
                    "fromFailure": False,
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        daemon = started.start("daemon", daemon_command())

        records = wait_for_runs(instance, backfill_id, len(partition_names), started)
        failed = [r for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
        assert not failed, failure_report(instance, failed)
        backfill = instance.get_backfill(backfill_id)
        assert backfill.status in (
            BulkActionStatus.REQUESTED,  # complete at the daemon's next backfill iteration
            BulkActionStatus.COMPLETED_SUCCESS,
        ), backfill.status

        # 6 runs, one per partition, each tagged with both dimensions.
        assert len(records) == len(partition_names)
        for record in records:
            tags = record.dagster_run.tags
            assert {PARTITION_TAG, MODEL_TAG, DAY_TAG} <= tags.keys(), tags
            assert tags[PARTITION_TAG] == f"{tags[DAY_TAG]}|{tags[MODEL_TAG]}"
        runs = [RunSpan.of(instance, record) for record in records]
        assert sorted(r.partition for r in runs) == sorted(partition_names)

        # Per model: never two runs in progress at once, from the moment the queue let one go
        # (it then counts against the limit) until it ended.
        occupancy = {m: sorted((r.launched, r.end) for r in runs if r.model == m) for m in MODELS}
        per_model = {model: max_concurrency(spans) for model, spans in occupancy.items()}
        assert per_model == {model: 1 for model in MODELS}, occupancy

        # Across models: executing side by side, within the instance's run cap.
        executing = sorted((r.start, r.end) for r in runs)
        across = max_concurrency(executing)
        assert 2 <= across <= config["concurrency"]["runs"]["max_concurrent_runs"], executing

        # The limit is what kept a model's runs apart, not the order of the queue: some run
        # queued earlier was passed over, while its model was busy, by one queued later.
        held_back = held_back_runs(runs)
        assert held_back, sorted(runs, key=lambda r: r.launched)

        # Every (market, model, day) exactly once, and one request per prediction.
        with engine.connect() as conn:
            stored = collections.Counter(
                (row.model_slug, row.day.isoformat(), row.market_id)
                for row in conn.execute(
                    sa.select(
                        predictions_table.c.model_slug,
                        predictions_table.c.day,
                        predictions_table.c.market_id,
                    ).where(predictions_table.c.origin == prediction_store.BATCH)
                )
            )
            dead_letters = conn.scalar(sa.select(sa.func.count()).select_from(prediction_failures))
        want = {(m, day, mid) for m in MODELS for day in DAYS for mid in expected[day]}
        assert set(stored) == want
        assert max(stored.values()) == 1
        assert dead_letters == 0
        assert server.request_count == len(want)
        assert server.counts == collections.Counter({"ok": len(want)})
        assert all(req.auth_ok for req in server.requests)
        # One run per model, each with at most MAX_IN_FLIGHT calls out.
        assert server.max_in_flight_seen <= MAX_IN_FLIGHT * len(MODELS)

        wall = max(r.end for r in runs) - min(r.start for r in runs)
        durations = [r.end - r.start for r in runs]
        print(
            f"\n[daemon concurrency] runs={len(records)} predictions={len(want)} "
            f"per-model max concurrency={per_model} cross-model max concurrency={across} "
            f"passed over while their model was busy: "
            f"{sorted({early.partition for early, _ in held_back})} "
            f"run durations {min(durations):.1f}-{max(durations):.1f}s, runs wall time "
            f"{wall:.1f}s, fake server max in flight {server.max_in_flight_seen}, "
            f"test wall time {time.monotonic() - test_started:.1f}s"
        )
        assert daemon.alive() and webserver.alive()
    except BaseException:
        started.print_logs()
        raise


def expected_markets(engine: sa.Engine) -> dict[str, set[int]]:
    """The markets each day's partitions must forecast: the asset's own selection with the
    default run config (the UI's backfill sends none)."""
    config = PredictionsConfig()
    chosen = {}
    with engine.connect() as conn:
        for day in DAYS:
            date = dt.date.fromisoformat(day)
            picked = select_markets(
                prediction_store.candidate_markets(conn, date),
                date,
                top_markets_count=config.top_markets_count,
                target_days_from_now=config.target_days_from_now,
                end_date_range_hours=config.end_date_range_hours,
                exclude_categories=config.exclude_categories,
            )
            assert picked, f"no market selected for {day}"
            chosen[day] = {c.id for c in picked}
    return chosen


def wait_for_runs(
    instance: dg.DagsterInstance, backfill_id: str, count: int, started: Services
) -> list[dg.RunRecord]:
    """The backfill's `count` runs once all of them have ended (sooner if one failed)."""
    runs_filter = dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})

    def ended() -> list[dg.RunRecord]:
        records = list(instance.get_run_records(filters=runs_filter))
        finished = [r for r in records if r.dagster_run.is_finished]
        failed = any(r.dagster_run.status != dg.DagsterRunStatus.SUCCESS for r in finished)
        return records if len(finished) >= count or failed else []

    def states() -> str:
        runs = instance.get_run_records(filters=runs_filter)
        counts = collections.Counter(r.dagster_run.status.value for r in runs)
        return f"{count} ended runs of backfill {backfill_id}; runs {dict(counts)}"

    return wait_until(ended, timeout=RUNS_TIMEOUT, what=states, services=started, interval=1.0)
