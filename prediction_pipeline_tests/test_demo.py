"""`prediction-pipeline demo`: its runs are found where the UI looks for a job's runs.

The UI's job pages (Jobs > <job> > Runs, the Overview timeline) ask the GraphQL `Pipeline.runs`
resolver, which filters by job name *and* the run's code location:
`RunsFilter(job_name=..., tags={".dagster/repository": "<repository>@<location>"})`. A run
made by `execute_in_process` has no location, so it matched only the global Runs list.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from prediction_pipeline_tests.daemon_harness import (
    REPO,
    open_instance,
    repo_instance_config,
    service_env,
    write_instance_yaml,
)

DAY = "2026-11-20"
JOB_RUNS_QUERY = """
query JobRuns($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { runs { runId status } }
  }
}
"""
# Two days (the day and one day of history), two built-in models.
EXPECTED_RUNS = {
    "markets_job": 2,
    "predictions_job": 4,
    "deltas_job": 1,
    "scoring_job": 1,
    "digests_job": 1,
}


def workspace_location_name() -> str:
    """The location name the UI loads the code from (workspace.yaml)."""
    [entry] = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    return entry["python_module"]["location_name"]


def test_the_demos_runs_are_on_their_jobs_runs_tab(tmp_path: Path):
    home = tmp_path / "home"
    write_instance_yaml(home, repo_instance_config())
    env = service_env(
        home,
        PREDICTION_PIPELINE_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        PREDICTION_PIPELINE_DATA_DIR=str(tmp_path / "data"),
    )
    script = [sys.executable, "-m", "prediction_pipeline.cli"]
    subprocess.run([*script, "db", "upgrade"], env=env, cwd=REPO, check=True, capture_output=True)
    demo = subprocess.run(
        [*script, "demo", "--day", DAY, "--history-days", "1"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"digests {DAY}: 3 users, 2 sent" in demo.stdout, demo.stdout

    # The UI's own resolver, over the code location loaded as the UI loads it.
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name="prediction_pipeline.definitions",
            working_directory=os.fspath(REPO),
        ),
        location_name=workspace_location_name(),
    )
    with (
        open_instance(home) as instance,
        WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace,
    ):
        context = workspace.create_request_context()
        [repository] = context.get_code_location(origin.location_name).get_repositories().values()
        found = {}
        for job in EXPECTED_RUNS:
            selector = {
                "pipelineName": job,
                "repositoryName": repository.name,
                "repositoryLocationName": origin.location_name,
            }
            result = execute_dagster_graphql(context, JOB_RUNS_QUERY, {"selector": selector})
            runs = result.data["pipelineOrError"]["runs"]
            assert {r["status"] for r in runs} == {"SUCCESS"}, (job, runs)
            found[job] = len(runs)
        assert found == EXPECTED_RUNS
        # Every run of the demo, none left out of its job's page.
        assert len(instance.get_run_records()) == sum(EXPECTED_RUNS.values())
        # The (day, model) runs carry their model tag, as a scheduled run would.
        predictions = instance.get_run_records(dg.RunsFilter(job_name="predictions_job"))
        assert {r.dagster_run.tags["dagster/partition/model"] for r in predictions} == {
            "baseline/market",
            "baseline/momentum",
        }
