"""The `predictions` asset with the built-in forecasters (no network)."""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.resources import AppDatabase, Forecasters, MarketSourceResource
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store.tables import market_snapshots, prediction_failures
from prediction_pipeline.store.tables import predictions as predictions_table
from prediction_pipeline_tests.pipeline_helpers import (
    ingest_days,
    materialization_metadata,
    partition,
    step_error,
)


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("models", ["baseline/market", "baseline/momentum"])
        yield instance


def resources(database_url: str, **forecasters) -> dict:
    return {
        "app_db": AppDatabase(url=database_url),
        "market_source": MarketSourceResource(synthetic_size=200),
        "forecasters": Forecasters(**forecasters),
    }


def run(database_url, instance, model, config=None, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [predictions],
        partition_key=partition(model),
        resources=resources(database_url, **kwargs.pop("forecasters", {})),
        instance=instance,
        run_config={"ops": {"predictions": {"config": config or {}}}},
        **kwargs,
    )


def test_baselines_predict_top_markets_once(database_url, engine, instance):
    ingest_days(database_url, instance)
    first = run(database_url, instance, "baseline/market", {"top_markets_count": 20})
    assert first.success
    m = materialization_metadata(first, "predictions")
    assert (m["selected"], m["predicted"], m["failed"], m["skipped_existing"]) == (20, 20, 0, 0)
    assert all(c.passed for c in first.get_asset_check_evaluations())

    second = run(database_url, instance, "baseline/market", {"top_markets_count": 20})
    m = materialization_metadata(second, "predictions")
    assert (m["predicted"], m["skipped_existing"]) == (0, 20)

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(predictions_table.c.probability, market_snapshots.c.yes_price).join(
                market_snapshots,
                sa.and_(
                    market_snapshots.c.market_id == predictions_table.c.market_id,
                    market_snapshots.c.day == predictions_table.c.day,
                ),
            )
        ).all()
    assert len(rows) == 20
    assert all(p == price for p, price in rows)  # the market baseline is the price


def test_momentum_uses_history_and_a_wider_pick_adds_only_the_new(database_url, engine, instance):
    ingest_days(database_url, instance)
    assert run(database_url, instance, "baseline/momentum", {"top_markets_count": 10}).success
    result = run(
        database_url,
        instance,
        "baseline/momentum",
        {"top_markets_count": 25, "experiment_tag": "wider"},
    )
    m = materialization_metadata(result, "predictions")
    assert (m["predicted"], m["skipped_existing"]) == (15, 10)
    with engine.connect() as conn:
        probs = conn.execute(
            sa.select(predictions_table.c.probability, predictions_table.c.market_price)
        ).all()
        tags = conn.scalars(sa.select(predictions_table.c.experiment_tag)).all()
    assert (
        len(probs) == 25
        and sorted(set(tags), key=str) == [None, "wider"]
        or set(tags)
        == {
            None,
            "wider",
        }
    )
    assert any(p != price for p, price in probs)  # momentum moves off the price
    assert all(0.01 <= p <= 0.99 for p, _ in probs)


def test_excluded_categories_and_window(database_url, engine, instance):
    ingest_days(database_url, instance, days=1)
    result = run(
        database_url,
        instance,
        "baseline/market",
        {
            "top_markets_count": 500,
            "exclude_categories": ["Politics", "crypto"],
            "target_days_from_now": 7,
            "end_date_range_hours": 24 * 30,
        },
    )
    assert result.success
    from prediction_pipeline.store.tables import markets as markets_table

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(markets_table.c.category, markets_table.c.end_date).join(
                predictions_table, predictions_table.c.market_id == markets_table.c.id
            )
        ).all()
    assert rows and not {c for c, _ in rows} & {"Politics", "Crypto"}
    for _, end in rows:
        end = end if end.tzinfo else end.replace(tzinfo=dt.UTC)
        assert (
            dt.datetime(2026, 11, 9, tzinfo=dt.UTC) <= end < dt.datetime(2026, 12, 9, tzinfo=dt.UTC)
        )


def test_no_markets_for_the_day_fails_clearly(database_url, instance):
    result = run(database_url, instance, "baseline/market", raise_on_error=False)
    assert not result.success
    assert "materialize `markets` for 2026-11-02 first" in str(
        result.get_step_failure_events()[0].event_specific_data.error
    )


def test_disabled_and_unknown_models_fail_clearly(database_url, engine, instance):
    ingest_days(database_url, instance, days=1)
    with engine.begin() as conn:
        model_store.update_model(conn, "baseline/momentum", enabled=False)
    result = run(database_url, instance, "baseline/momentum", raise_on_error=False)
    error = step_error(result)
    assert "models enable baseline/momentum" in error

    instance.add_dynamic_partitions("models", ["acme/unknown"])
    result = run(database_url, instance, "acme/unknown", raise_on_error=False)
    assert "models add acme/unknown" in str(
        result.get_step_failure_events()[0].event_specific_data.error
    )


def test_openrouter_model_without_key_fails_only_that_partition(database_url, engine, instance):
    ingest_days(database_url, instance, days=1)
    with engine.begin() as conn:
        model_store.upsert_model(conn, model_store.ModelSpec("openai/gpt-4o", "openrouter"))
    instance.add_dynamic_partitions("models", ["openai/gpt-4o"])
    result = run(database_url, instance, "openai/gpt-4o", raise_on_error=False)
    error = step_error(result)
    assert "OPENROUTER_API_KEY is not set" in error
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(prediction_failures)) == 0
    assert run(database_url, instance, "baseline/market").success
