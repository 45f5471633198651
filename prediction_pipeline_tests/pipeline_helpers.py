"""Helpers shared by the asset tests: ingest synthetic days, address partitions, read metadata."""

import datetime as dt

import dagster as dg

from prediction_pipeline.defs.markets.assets import markets
from prediction_pipeline.resources import AppDatabase, MarketSourceResource

DAY = dt.date(2026, 11, 2)


def partition(model: str, day: dt.date = DAY) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"day": day.isoformat(), "model": model})


def ingest_days(
    database_url: str, instance: dg.DagsterInstance, days: int = 8, end: dt.date = DAY, size=200
) -> None:
    """Materialize `markets` for `days` days ending at `end` (synthetic source)."""
    resources = {
        "app_db": AppDatabase(url=database_url),
        "market_source": MarketSourceResource(synthetic_size=size),
    }
    for offset in range(days - 1, -1, -1):
        day = (end - dt.timedelta(days=offset)).isoformat()
        result = dg.materialize(
            [markets], partition_key=day, resources=resources, instance=instance
        )
        assert result.success


def materialization_metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    event = result.asset_materializations_for_node(node)[0]
    return {key: value.value for key, value in event.metadata.items()}


def step_error(result: dg.ExecuteInProcessResult) -> str:
    return str(result.get_step_failure_events()[0].event_specific_data.error)
