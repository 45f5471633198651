"""The daily chain's automation conditions (defs/automation.py), evaluated tick by tick over
the real Definitions with `dg.evaluate_automation_conditions`, as the `pipeline_automation`
sensor does.

Upstream data is recorded as materializations on a test instance (what a successful run
writes); no asset runs here. `test_daemon_automation.py` runs the chain with a real daemon.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from prediction_pipeline.definitions import defs
from prediction_pipeline.partitions import daily_partitions
from prediction_pipeline.store import models as model_store

NOW = dt.datetime(2026, 3, 10, 6, 5, tzinfo=dt.UTC)
TODAY = "2026-03-10"
YESTERDAY = "2026-03-09"
ENABLED = ["baseline/market", "baseline/momentum"]  # the built-in models, enabled by default
DISABLED = "acme/off"

PREDICTIONS = dg.AssetKey("predictions")
DELTAS = dg.AssetKey("prediction_deltas")
DIGESTS = dg.AssetKey("watchlist_digests")
SCORES = dg.AssetKey("forecast_scores")
LEADERBOARD = dg.AssetKey("model_leaderboard")


class Ticks:
    """The automation sensor's ticks, one cursor carried from each to the next."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor = None

    def tick(self) -> dict[str, set[str | None]]:
        """Evaluate once; the requested partitions by asset (assets with none left out)."""
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=self.instance, cursor=self.cursor, evaluation_time=NOW
        )
        self.cursor = result.cursor
        keys = [PREDICTIONS, DELTAS, DIGESTS, SCORES, LEADERBOARD]
        requested = {key.path[-1]: set(result.get_requested_partitions(key)) for key in keys}
        assert result.total_requested == sum(len(v) for v in requested.values())
        return {name: parts for name, parts in requested.items() if parts}

    def materialized(self, asset: str, partition: str | None = None, **metadata) -> None:
        """What a successful run of `asset` (`partition`) records."""
        self.instance.report_runless_asset_event(
            dg.AssetMaterialization(asset, partition=partition, metadata=metadata)
        )


def today(model: str) -> str:
    return str(dg.MultiPartitionKey({"day": TODAY, "model": model}))


@pytest.fixture
def ticks(database_url, engine, monkeypatch):
    """A registry with the two built-in models enabled and one disabled; the instance has a
    `models` partition for each (the registry sensor adds disabled models too)."""
    monkeypatch.setenv("PREDICTION_PIPELINE_DATABASE_URL", database_url)
    with engine.begin() as conn:
        model_store.upsert_model(
            conn, model_store.ModelSpec(DISABLED, model_store.OPENROUTER_PROVIDER, enabled=False)
        )
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("models", [*ENABLED, DISABLED])
        ticks = Ticks(instance)
        # The first tick only records where things stand: nothing is new yet.
        assert ticks.tick() == {}
        yield ticks


def test_the_chain_follows_the_data_one_request_per_step(ticks):
    ticks.materialized("markets", YESTERDAY, resolved=0)
    assert ticks.tick() == {}, "a past day's markets start nothing"

    ticks.materialized("markets", TODAY, resolved=0)
    # Today's partition of each enabled model, once; not the disabled model; nothing else yet
    # (deltas wait for the predictions, scores for resolutions).
    assert ticks.tick() == {"predictions": {today(m) for m in ENABLED}}
    assert ticks.tick() == {}, "the same markets start no second run"

    for model in ENABLED:
        ticks.materialized("predictions", today(model))
    assert ticks.tick() == {"prediction_deltas": {TODAY}}
    assert ticks.tick() == {}

    ticks.materialized("prediction_deltas", TODAY)
    assert ticks.tick() == {"watchlist_digests": {TODAY}}
    assert ticks.tick() == {}

    ticks.materialized("watchlist_digests", TODAY)
    assert ticks.tick() == {}


def test_a_failed_model_does_not_hold_back_the_others_deltas(ticks):
    ticks.materialized("markets", TODAY, resolved=0)
    assert ticks.tick() == {"predictions": {today(m) for m in ENABLED}}
    # Only one model's run succeeded (the other failed: no materialization).
    ticks.materialized("predictions", today(ENABLED[0]))
    assert ticks.tick() == {"prediction_deltas": {TODAY}}


def test_a_failed_markets_run_delays_the_chain_until_markets_succeed(ticks):
    @dg.asset(name="markets", partitions_def=daily_partitions)
    def failing_markets() -> None:
        raise RuntimeError("the market source is down")

    result = dg.materialize(
        [failing_markets], partition_key=TODAY, instance=ticks.instance, raise_on_error=False
    )
    assert not result.success
    assert ticks.tick() == {}
    assert ticks.tick() == {}, "still nothing while today's markets are missing"

    ticks.materialized("markets", TODAY, resolved=0)  # the retry, later, succeeds
    assert ticks.tick() == {"predictions": {today(m) for m in ENABLED}}


def test_an_enabled_model_is_requested_a_disabled_one_is_not(ticks, engine):
    ticks.materialized("markets", TODAY, resolved=0)
    assert ticks.tick() == {"predictions": {today(m) for m in ENABLED}}
    # Enabled later the same day: its partition of today is requested on the next tick, once.
    with engine.begin() as conn:
        model_store.update_model(conn, DISABLED, enabled=True)
    assert ticks.tick() == {"predictions": {today(DISABLED)}}
    assert ticks.tick() == {}


def test_scores_and_leaderboard_follow_new_resolutions_only(ticks):
    ticks.materialized("markets", YESTERDAY, resolved=0)
    assert ticks.tick() == {}

    ticks.materialized("markets", TODAY, resolved=3)
    requested = ticks.tick()
    assert requested.pop("predictions") == {today(m) for m in ENABLED}
    # Both in one run: the leaderboard is rebuilt from the new scores.
    assert requested == {"forecast_scores": {None}, "model_leaderboard": {None}}
    assert ticks.tick() == {}
