"""The sensor that keeps the `models` partitions in step with the registry. Today's
predictions partitions are requested by `pipeline_automation`: test_automation.py."""

import dagster as dg

from prediction_pipeline.defs.predictions.automation import model_registry_sensor
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.store import models as model_store


def test_registry_sensor_repairs_drift(database_url, engine):
    with engine.begin() as conn:
        model_store.upsert_model(
            conn, model_store.ModelSpec("anthropic/claude-sonnet-4.5:online", "openrouter")
        )
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("models", ["baseline/market"])
        with dg.build_sensor_context(
            instance=instance, resources={"app_db": AppDatabase(url=database_url)}
        ) as context:
            result = model_registry_sensor(context)
            requested = result.dynamic_partitions_requests[0]
            assert sorted(requested.partition_keys) == [
                "anthropic/claude-sonnet-4.5:online",
                "baseline/momentum",
            ]
            instance.add_dynamic_partitions("models", list(requested.partition_keys))
            assert isinstance(model_registry_sensor(context), dg.SkipReason)
