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
