"""The daily chain, driven by data instead of clock times.

`markets` is the only asset on a schedule (`markets_daily`, 06:00 UTC): time is what starts the
day. Everything downstream follows the data, through the conditions below, evaluated by one
sensor (`pipeline_automation`, running by default):

    markets ──> predictions (today, enabled models) ──> prediction_deltas ──> watchlist_digests
       └── new resolutions ──> forecast_scores ──> model_leaderboard

A late markets run makes the chain late; a failed one leaves today's markets missing, so
nothing downstream is requested until a later markets run succeeds. Every trigger is
`since_last_handled`: a request (or a materialization) consumes it, so the same data never
starts a second run, and a failed run is not retried by the sensor (the assets' RetryPolicy
does that) but by the next new data or an operator.

The sensor runs in the code server (`use_user_code_server=True`) because two conditions are
Python: whether a partition's model is enabled in the registry, and whether a markets run
recorded new resolutions.
"""

from __future__ import annotations

import dagster as dg

from prediction_pipeline.partitions import parse_model_day_key
from prediction_pipeline.resources import AppDatabase, default_resources
from prediction_pipeline.services.models import model_slugs

AC = dg.AutomationCondition

# The chain's latency is a few of these; each tick is a few cheap queries.
AUTOMATION_INTERVAL_SECONDS = 10

# The markets metadata entry that counts markets that became resolved in that run.
RESOLVED_METADATA_KEY = "resolved"


def _app_database() -> AppDatabase:
    # The resource the assets get, configured from the environment (a condition has no
    # resources of its own); initializing it resolves its EnvVar.
    app_db = default_resources()["app_db"].process_config_and_initialize()
    assert isinstance(app_db, AppDatabase)
    return app_db


class ModelEnabled(dg.AutomationCondition):
    """True for the (day, model) partitions whose model is enabled in the registry.

    A disabled model keeps its `models` partition (its history stays browsable), so the
    partition set alone cannot leave it out: the registry's `enabled` flag does."""

    @property
    def name(self) -> str:
        return "model_enabled"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:  # no query when nothing is asked about
            return dg.AutomationResult(context, candidates)
        with _app_database().connect() as conn:
            enabled = set(model_slugs(conn, enabled_only=True))
        keys = {
            key
            for key in candidates.expensively_compute_partition_keys()
            if parse_model_day_key(key)[1] in enabled
        }
        return dg.AutomationResult(
            context, candidates.compute_intersection_with_partition_keys(keys)
        )


class RecordedResolutions(dg.AutomationCondition):
    """True for the `markets` partitions whose latest materialization recorded markets that
    became resolved (metadata `resolved` > 0)."""

    @property
    def name(self) -> str:
        return "recorded_new_resolutions"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty or not candidates.is_partitioned:
            return dg.AutomationResult(context, context.get_empty_subset())
        instance = context.asset_graph_view.instance
        keys = set()
        # Evaluated after `newly_updated`: only the partitions materialized since the last tick.
        for key in candidates.expensively_compute_partition_keys():
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=context.key, asset_partitions=[key]),
                limit=1,
                ascending=False,
            ).records
            materialization = records[0].asset_materialization if records else None
            entry = materialization.metadata.get(RESOLVED_METADATA_KEY) if materialization else None
            if entry is not None and (entry.value or 0) > 0:
                keys.add(key)
        return dg.AutomationResult(
            context, candidates.compute_intersection_with_partition_keys(keys)
        )


def _deps(*keys: str) -> dg.AssetSelection:
    return dg.AssetSelection.assets(*keys)


def _updated(*keys: str) -> dg.AutomationCondition:
    """One of these deps was materialized since the target was last requested or updated."""
    return AC.any_deps_match(AC.newly_updated()).allow(_deps(*keys)).since_last_handled()


def _waiting_for_nothing() -> dg.AutomationCondition:
    """No dep is being materialized and the target is not already running."""
    return ~AC.any_deps_in_progress() & ~AC.in_progress()


# Today's partition of each enabled model, once today's markets are in (or again when they are
# materialized again). `eager()` also asks for a partition that appears during the day (a model
# added to the registry) once markets are in. A disabled model's partition is never requested;
# enabled later that day, it is requested on the next tick.
PREDICTIONS = (AC.eager() & ModelEnabled()).with_label("eager, enabled models only")

# Once today's predictions have settled: at least one new predictions partition of today, none
# still queued or running, today's markets present. A model whose run failed (or a disabled
# model, never requested) does not hold the others' deltas back. Markets alone do not trigger
# it: in the tick markets land, the predictions they start are not in progress yet.
DELTAS = (
    AC.in_latest_time_window()
    & _updated("predictions").with_label("new predictions of the day")
    & ~AC.any_deps_match(AC.missing()).allow(_deps("markets")).with_label("markets missing")
    & _waiting_for_nothing()
).with_label("after the day's predictions")

# Once today's deltas are in (and nothing it reads, scores included, is still running).
DIGESTS = (
    AC.in_latest_time_window()
    & _updated("prediction_deltas").with_label("new deltas of the day")
    & _waiting_for_nothing()
).with_label("after the day's deltas")

# When a markets run recorded markets that became resolved: there is something new to score.
SCORES = (
    AC.any_deps_match(AC.newly_updated() & RecordedResolutions())
    .allow(_deps("markets"))
    .since_last_handled()
    .with_label("markets recorded new resolutions")
    & _waiting_for_nothing()
).with_label("after new resolutions")

# Rebuilt whenever the scores change (in the same run when both are requested together).
LEADERBOARD = AC.eager()

automation_sensor = dg.AutomationConditionSensorDefinition(
    "pipeline_automation",
    target=_deps(
        "predictions",
        "prediction_deltas",
        "watchlist_digests",
        "forecast_scores",
        "model_leaderboard",
    ),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    # Two conditions are Python (the model registry, the resolutions count).
    use_user_code_server=True,
    # One run per (day, model) partition, with its dagster/partition/model tag, so the run
    # queue's per-model limit applies; a backfill would launch its runs later, on its own.
    emit_backfills=False,
    description=(
        "Runs the daily chain after markets: predictions of each enabled model, deltas, "
        "digests; scores and leaderboard when markets resolve. Stop it to pause the chain."
    ),
)
