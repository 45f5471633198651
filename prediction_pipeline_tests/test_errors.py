"""Clear errors, fast failures: a usage mistake is ONE line naming the fix (no traceback); a
bad run config fails the step at once, never retried. The CLI runs as the real console
script in a subprocess, the way an operator meets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from prediction_pipeline.cli import main
from prediction_pipeline.definitions import defs
from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.defs.run_config import InvalidRunConfig, RunConfig
from prediction_pipeline.partitions import model_day_partitions, parse_model_day_key
from prediction_pipeline.resources import AppDatabase, Forecasters
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline_tests.pipeline_helpers import ingest_days, partition

REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).parent / "prediction-pipeline"
DAGSTER = Path(sys.executable).parent / "dagster"


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "PREDICTION_PIPELINE_DATABASE_URL")
    }
    # The package under test wins over the editable install, in the child process too.
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=_env(**env),
        cwd=cwd,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one line on stderr and nothing on stdout."""
    assert result.returncode in (1, 2), result
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- 20: database not upgraded, bad URL, unreachable server ---------------------------------

COMMANDS_NEEDING_THE_SCHEMA = [
    ["markets", "show"],
    ["models", "list"],
    ["predictions", "show"],
    ["users", "list"],
    ["status", "some-id"],
]


def test_every_command_on_a_database_not_upgraded_says_db_upgrade(empty_database_url):
    for command in COMMANDS_NEEDING_THE_SCHEMA:
        line = one_line_error(run_cli("--database-url", empty_database_url, *command))
        assert "run `prediction-pipeline db upgrade`" in line, (command, line)
        assert "no schema" in line


def test_a_table_dropped_by_hand_is_one_line_too(database_url):
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE run_failure_alerts"))
    engine.dispose()
    line = one_line_error(run_cli("alerts", PREDICTION_PIPELINE_DATABASE_URL=database_url))
    assert "lacks a table" in line and "prediction-pipeline db upgrade" in line


@pytest.mark.parametrize(
    ("url", "expected", "code"),
    [
        ("notaurl", "'notaurl' is not a database URL: use sqlite:///PATH or postgresql", 2),
        ("user:hunter2@db/app", "'user:***@db/app' is not a database URL", 2),
        ("mysql://root:hunter2@localhost/app", "unsupported database 'mysql'", 2),
        ("postgresql+nosuch://u@localhost/app", "driver 'postgresql+nosuch' is not available", 2),
        (
            # Port 1 on the loopback refuses at once.
            "postgresql+psycopg2://postgres:hunter2@127.0.0.1:1/app",
            "cannot connect to the app database at 127.0.0.1:1",
            1,
        ),
    ],
)
def test_a_bad_database_url_is_one_line_without_the_password(url, expected, code):
    for command in (["markets", "show"], ["db", "upgrade"], ["db", "current"]):
        result = run_cli(*command, PREDICTION_PIPELINE_DATABASE_URL=url)
        line = one_line_error(result)
        assert result.returncode == code
        assert expected in line and "PREDICTION_PIPELINE_DATABASE_URL" in line, line
        assert "hunter2" not in line


def test_a_missing_postgres_database_names_the_host(postgres_available):
    if not postgres_available:
        pytest.skip("no PostgreSQL")
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/pp_no_such_database"
    line = one_line_error(run_cli("--database-url", url, "models", "list"))
    assert "127.0.0.1:5432" in line and 'database "pp_no_such_database" does not exist' in line
    assert "--database-url" in line


# -- 21: demo without DAGSTER_HOME -----------------------------------------------------------


def test_demo_without_dagster_home_is_one_line_and_changes_nothing(tmp_path):
    db = tmp_path / "app.db"
    line = one_line_error(run_cli("--database-url", f"sqlite:///{db}", "demo"))
    assert line.startswith("Error: DAGSTER_HOME is unset") and "make demo" in line
    assert not db.exists()  # failed before migrating anything


def test_demo_with_a_missing_dagster_home_or_an_early_day_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    missing = str(tmp_path / "nope")
    line = one_line_error(run_cli("--database-url", url, "demo", DAGSTER_HOME=missing))
    assert "is not an existing absolute folder" in line
    line = one_line_error(
        run_cli("--database-url", url, "demo", "--day", "2026-01-05", DAGSTER_HOME=str(tmp_path))
    )
    assert "before the first partition day 2026-01-01" in line


# -- 22: a bad run config fails at once, without retries ------------------------------------


def _attempts(result: dg.ExecuteInProcessResult, step: str = "predictions") -> int:
    events = result.events_for_node(step)
    return sum(e.event_type_value in ("STEP_START", "STEP_RESTARTED") for e in events)


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("models", ["baseline/market", "openai/gpt-4o"])
        yield instance


def _materialize(database_url, instance, model, config, **forecasters):
    return dg.materialize(
        [predictions],
        partition_key=partition(model),
        resources={
            "app_db": AppDatabase(url=database_url),
            "forecasters": Forecasters(**forecasters),
        },
        instance=instance,
        run_config={"ops": {"predictions": {"config": config}}},
        raise_on_error=False,
    )


def test_an_out_of_range_config_fails_the_first_attempt_with_the_message(database_url, instance):
    result = _materialize(database_url, instance, "baseline/market", {"top_markets_count": -5})
    assert not result.success
    assert _attempts(result) == 1  # the RetryPolicy (3 retries, 30 s up) did not fire
    error = result.get_step_failure_events()[0].event_specific_data.error
    assert error.message.startswith(
        "prediction_pipeline.defs.run_config.InvalidRunConfig: invalid run config "
        "PredictionsConfig: top_markets_count: Input should be greater than or equal to 1 (got -5)"
    )


def test_a_validation_error_inside_the_asset_is_not_retried(database_url, engine, instance):
    ingest_days(database_url, instance, days=1, size=20)
    with engine.begin() as conn:
        # A registry row no CLI would write: the rate limiter refuses 0 requests per second.
        model_store.upsert_model(
            conn, model_store.ModelSpec("openai/gpt-4o", "openrouter", requests_per_second=0)
        )
    result = _materialize(
        database_url, instance, "openai/gpt-4o", {}, openrouter_api_key="sk-test-not-used"
    )
    assert not result.success and _attempts(result) == 1
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "invalid registry entry of model 'openai/gpt-4o': requests_per_second" in message


def test_every_run_config_class_fails_without_retries():
    """Every op and asset with a config class uses RunConfig (so a bad value is final)."""
    repo = defs.get_repository_def()
    classes = set()
    for job in repo.get_all_jobs():
        for node in job.graph.iterate_op_defs():
            fn = node.compute_fn
            if fn is not None and getattr(fn, "has_config_arg", lambda: False)():
                classes.add(fn.get_config_arg().annotation)
    names = {c.__name__ for c in classes}
    assert {"PredictionsConfig", "DeltasConfig", "ScoringConfig", "DigestsConfig"} <= names
    assert {"RequestConfig", "SessionConfig"} <= names
    for cls in classes:
        assert issubclass(cls, RunConfig), cls
    with pytest.raises(InvalidRunConfig, match="request_id: String should have at least 1"):
        next(c for c in classes if c.__name__ == "RequestConfig")(request_id="")


def test_dagster_cli_with_a_bad_config_fails_at_once(tmp_path):
    """The issue's case through `dagster asset materialize --config-json`. The config fails
    before the step touches the database: one engine (SQLite) is enough."""
    home = tmp_path / "home"
    home.mkdir()
    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    cli_env = {"DAGSTER_HOME": str(home), "PREDICTION_PIPELINE_DATABASE_URL": database_url}
    # Migrates and adds the enabled models to the `models` partitions.
    assert run_cli("db", "upgrade", **cli_env).returncode == 0
    config = {"ops": {"predictions": {"config": {"top_markets_count": -5}}}}
    result = subprocess.run(
        [
            str(DAGSTER),
            "asset",
            "materialize",
            "-m",
            "prediction_pipeline.definitions",
            "--select",
            "predictions",
            "--partition",
            "2026-11-02|baseline/market",
            "--config-json",
            json.dumps(config),
        ],
        capture_output=True,
        text=True,
        env=_env(**cli_env),
        timeout=300,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "invalid run config PredictionsConfig: top_markets_count" in out
    assert "STEP_UP_FOR_RETRY" not in out and "requested a retry" not in out


# -- 23: partition keys ----------------------------------------------------------------------


def test_db_upgrade_adds_the_enabled_models_to_the_partitions(empty_database_url, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    runner = CliRunner()
    upgrade = ["--database-url", empty_database_url, "db", "upgrade"]
    out = runner.invoke(main, upgrade, env={"DAGSTER_HOME": str(home)})
    assert out.exit_code == 0, out.output
    assert "added partition 'baseline/market'" in out.output
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert set(instance.get_dynamic_partitions("models")) == {
            "baseline/market",
            "baseline/momentum",
        }
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            assert model_day_partitions.has_partition_key("2026-11-29|baseline/market")
    again = runner.invoke(main, upgrade, env={"DAGSTER_HOME": str(home)})
    assert again.exit_code == 0 and "added partition" not in again.output
    unset = runner.invoke(main, upgrade, env={"DAGSTER_HOME": ""})
    assert unset.exit_code == 0 and "DAGSTER_HOME is unset" in unset.output


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("2026/11/29", "'2026/11/29' is not a day in YYYY-MM-DD"),
        ("2026/11/29|baseline/market", "'2026/11/29' is not a day in YYYY-MM-DD"),
        ("baseline/market|2026-11-29", "the day comes first"),
        ("2026-11-29", "has no model"),
    ],
)
def test_a_malformed_key_says_the_format(key, expected):
    with pytest.raises(ValueError, match="DAY|MODEL") as raised:
        parse_model_day_key(key)
    assert expected in str(raised.value) and "2026-11-29|openai/gpt-4o" in str(raised.value)


def test_a_well_formed_key_parses_both_ways():
    day, model = parse_model_day_key("2026-11-29|openai/gpt-4o:online")
    assert (str(day), model) == ("2026-11-29", "openai/gpt-4o:online")
    assert parse_model_day_key(partition("baseline/market"))[1] == "baseline/market"


def test_unknown_keys_get_the_format_and_the_fix_from_the_definition(instance):
    with dg.partition_loading_context(dynamic_partitions_store=instance) as context:
        model_day_partitions.validate_partition_key("2026-11-02|baseline/market", context)
        with pytest.raises(dg.DagsterUnknownPartitionError, match="models add no/such"):
            model_day_partitions.validate_partition_key("2026-11-02|no/such", context)
        with pytest.raises(dg.DagsterUnknownPartitionError, match="day comes first"):
            model_day_partitions.validate_partition_key("baseline/market|2026-11-02", context)


def test_dagster_cli_with_a_slashed_day_shows_the_format(tmp_path):
    result = subprocess.run(
        [
            str(DAGSTER),
            "asset",
            "materialize",
            "-m",
            "prediction_pipeline.definitions",
            "--select",
            "predictions",
            "--partition",
            "2026/11/29",
        ],
        capture_output=True,
        text=True,
        env=_env(DAGSTER_HOME=str(tmp_path)),
        timeout=300,
    )
    assert result.returncode != 0
    # Dagster's CLI wraps it in a traceback of its own; ours is the first exception.
    assert "'2026/11/29' is not a day in YYYY-MM-DD" in result.stderr
    assert "DAY|MODEL, e.g. 2026-11-29|openai/gpt-4o" in result.stderr


def test_demo_with_a_slashed_day_says_the_format_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = run_cli("--database-url", url, "demo", "--day", "2026/11/29")
    line = one_line_error(result)
    assert result.returncode == 2
    assert "'2026/11/29' does not match the format '%Y-%m-%d'" in line
    assert "see `prediction-pipeline demo --help`" in line


# -- 24: small ones --------------------------------------------------------------------------


def test_markets_show_tells_no_match_from_no_markets(database_url):
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, ["--database-url", database_url, *args])

    assert "materialize the `markets` asset first" in cli("markets", "show").output
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(database_url, instance, days=1, size=20)
    out = cli("markets", "show", "--search", "zzz")
    assert out.exit_code == 0 and out.output.strip() == "no markets with question ~ 'zzz'"
    for bad in ("0", "-1"):
        out = cli("markets", "show", "--limit", bad)
        assert out.exit_code == 2 and "Invalid value for '--limit'" in out.output
    for command in (["predictions", "show"], ["predictions", "failures"], ["alerts"]):
        assert cli(*command, "--limit", "-1").exit_code == 2
    assert cli("users", "list", "--limit", "0").exit_code == 2


def test_predictions_show_names_an_unknown_model_and_an_empty_result(database_url):
    runner = CliRunner()
    out = runner.invoke(
        main, ["--database-url", database_url, "predictions", "show", "--model", "no/such"]
    )
    assert out.exit_code == 1
    assert out.output.strip() == (
        "Error: no model 'no/such' in the registry: see `prediction-pipeline models list`"
    )
    out = runner.invoke(
        main, ["--database-url", database_url, "predictions", "show", "--model", "baseline/market"]
    )
    assert out.exit_code == 0 and out.output.strip() == "no predictions with model baseline/market"


def test_a_one_credit_session_says_credit(database_url):
    runner = CliRunner()
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(database_url, instance, days=1, size=10)

    def cli(*args):
        return runner.invoke(main, ["--database-url", database_url, *args])

    market = json.loads(cli("markets", "show", "--limit", "1", "--json").output)["source_id"]
    assert cli("users", "add", "bob@example.com").exit_code == 0
    out = cli(
        "session", "create", "--market", market, "--models", "baseline/market", "--user",
        "bob@example.com",
    )  # fmt: skip
    assert out.exit_code == 1 and "costs 1 credit; the balance is 0" in out.output


def test_db_upgrade_with_a_missing_dagster_home_still_upgrades(tmp_path):
    """The app database is db upgrade's job; partitions are a bonus the sensor repairs."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    missing = str(tmp_path / "no-such-home")
    out = CliRunner().invoke(
        main, ["--database-url", url, "db", "upgrade"], env={"DAGSTER_HOME": missing}
    )
    assert out.exit_code == 0, out.output
    assert f"at {migrate.head_revision()}" in out.output
    assert "model partitions not added" in out.output and "no-such-home" in out.output
