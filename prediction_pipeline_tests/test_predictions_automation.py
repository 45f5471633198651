import datetime as dt

import dagster as dg

from prediction_pipeline.definitions import defs
from prediction_pipeline.defs.predictions.automation import model_registry_sensor, predictions_daily
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.store import models as model_store


def test_schedule_requests_today_for_every_enabled_model(database_url, engine):
    with engine.begin() as conn:
        model_store.upsert_model(conn, model_store.ModelSpec("openai/gpt-4o", "openrouter"))
        model_store.upsert_model(
            conn, model_store.ModelSpec("acme/off", "openrouter", enabled=False)
        )
    with dg.instance_for_test() as instance:
        # Contexts are entered: the instance they open must be closed with them.
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=dt.datetime(2026, 11, 29, 7, 0, tzinfo=dt.UTC),
            resources={"app_db": AppDatabase(url=database_url)},
        ) as context:
            requests = list(predictions_daily(context))
        keys = sorted(r.partition_key for r in requests)
        assert keys == [
            "2026-11-29|baseline/market",
            "2026-11-29|baseline/momentum",
            "2026-11-29|openai/gpt-4o",
        ]
        assert len({r.run_key for r in requests}) == 3
        # The schedule made sure the partitions exist before requesting them.
        assert set(instance.get_dynamic_partitions("models")) >= {"openai/gpt-4o"}
        job = defs.resolve_job_def("predictions_job")
        for request in requests:
            tags = job.partitions_def.get_tags_for_partition_key(request.partition_key)
            assert tags["dagster/partition/model"] == request.partition_key.split("|")[1]
            assert tags["dagster/partition/day"] == "2026-11-29"


def test_registry_sensor_repairs_drift(database_url, engine):
    with engine.begin() as conn:
        model_store.upsert_model(
            conn, model_store.ModelSpec("anthropic/claude-sonnet-4.5:online", "openrouter")
        )
    with dg.instance_for_test() as instance:
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
