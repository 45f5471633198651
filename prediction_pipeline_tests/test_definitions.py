"""Load the one Definitions object the way every CLI does, so a broken import, an invalid
schedule or a missing resource fails here first."""

import subprocess
import sys

import dagster as dg

from prediction_pipeline.definitions import defs


def test_definitions_validate():
    dg.Definitions.validate_loadable(defs)


def test_every_job_schedule_and_sensor_resolves():
    repo = defs.get_repository_def()
    jobs = {job.name for job in repo.get_all_jobs()}
    assert "markets_job" in jobs
    for schedule in repo.schedule_defs:
        assert schedule.job_name in jobs
        assert schedule.cron_schedule
    for sensor in repo.sensor_defs:
        assert sensor.name
    asset_keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert "markets" in asset_keys
    check_keys = {key.name for key in repo.asset_graph.asset_check_keys}
    assert {"snapshot_prices_in_range", "every_market_has_a_question"} <= check_keys


def test_only_markets_runs_on_the_clock():
    # Time starts the day; the rest of the chain follows the data (test_automation.py).
    repo = defs.get_repository_def()
    schedules = [(s.name, s.cron_schedule) for s in repo.schedule_defs]
    assert schedules == [("markets_daily", "0 6 * * *")]


def test_one_automation_sensor_runs_the_chain_by_default():
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("pipeline_automation")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # Its conditions read the model registry: they run in the code server.
    assert sensor.sensor_type.value == "AUTOMATION"
    # One run per (day, model) partition (per-model run limits), not a backfill.
    assert not sensor.emit_backfills
    graph = repo.asset_graph
    conditioned = {
        key.to_user_string()
        for key in graph.get_all_asset_keys()
        if graph.get(key).automation_condition is not None
    }
    assert conditioned == {
        "predictions",
        "prediction_deltas",
        "watchlist_digests",
        "forecast_scores",
        "model_leaderboard",
    }
    assert {k.to_user_string() for k in sensor.asset_selection.resolve(graph)} == conditioned
    # No default sensor beside it: every conditioned asset is targeted.
    assert "default_automation_condition_sensor" not in {s.name for s in repo.sensor_defs}


def test_partition_mappings_say_which_days_each_asset_reads():
    graph = defs.get_repository_def().asset_graph
    by_day = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="day")

    def mapping(child: str, parent: str):
        return graph.get_partition_mapping(dg.AssetKey(child), dg.AssetKey(parent))

    assert mapping("predictions", "markets") == by_day
    assert mapping("prediction_deltas", "predictions") == by_day
    assert mapping("watchlist_digests", "predictions") == by_day
    assert isinstance(mapping("prediction_deltas", "markets"), dg.TimeWindowPartitionMapping)
    assert isinstance(mapping("forecast_scores", "markets"), dg.AllPartitionMapping)
    assert isinstance(mapping("forecast_scores", "predictions"), dg.AllPartitionMapping)


def test_module_loads_in_a_fresh_interpreter_like_dagster_dev():
    # `dagster dev` / `dagster asset materialize -m prediction_pipeline.definitions` import
    # the module by name in a new process.
    out = subprocess.run(
        [sys.executable, "-c", "import prediction_pipeline.definitions as d; print(type(d.defs))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Definitions" in out.stdout
