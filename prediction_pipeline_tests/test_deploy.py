"""The deployment files are checked, not only written.

- deploy/helm/values.yaml validates against the official Dagster Helm chart's values schema at
  the pinned Dagster release. The schema is not on any package registry, so it is downloaded
  once by deploy/helm/fetch_schema.sh; without it (DAGSTER_HELM_SCHEMA unset and nothing in
  .local/helm/<version>/) that test is skipped.
- deploy/helm/values.yaml and deploy/dagster.yaml carry the same run limits and retry policy.
- deploy/dagster.yaml loads as an instance against a fresh PostgreSQL database and stores a run.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import pytest
import referencing
import referencing.exceptions
import sqlalchemy as sa
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

REPO = Path(__file__).resolve().parents[1]
HELM_VALUES = REPO / "deploy/helm/values.yaml"
FETCH_SCRIPT = REPO / "deploy/helm/fetch_schema.sh"
INSTANCE_YAML = REPO / "deploy/dagster.yaml"


def _dagster_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d.split("==")[1] for d in deps if d.startswith("dagster==")]
    return pin


def _script_version() -> str:
    [version] = re.findall(r"^DAGSTER_VERSION=(\S+)$", FETCH_SCRIPT.read_text(), re.M)
    return version


def _coalesce(defaults: Any, overrides: Any) -> Any:
    """Helm's merge of a chart's defaults with user values: maps merge key by key, anything
    else (lists included) is replaced, and a null override removes the default."""
    if not (isinstance(defaults, dict) and isinstance(overrides, dict)):
        return copy.deepcopy(overrides)
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = _coalesce(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _no_remote_refs(uri: str) -> referencing.Resource:
    # Recent chart schemas embed the Kubernetes definitions; an older one that points at a URL
    # cannot be checked offline, and must not fetch anything in a test.
    raise referencing.exceptions.NoSuchResource(ref=uri)


def _schema_errors(schema: dict, values: dict) -> list[str]:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, registry=referencing.Registry(retrieve=_no_remote_refs))
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def test_coalesce_follows_helm_merge_rules():
    defaults = {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}, "f": 1}
    overrides = {"a": {"c": [3]}, "d": None, "g": {"h": 2}}
    assert _coalesce(defaults, overrides) == {"a": {"b": 1, "c": [3]}, "f": 1, "g": {"h": 2}}
    assert defaults["a"]["c"] == [1, 2]


def test_schema_errors_reports_paths():
    schema = {
        "type": "object",
        "properties": {
            "pools": {"type": "object", "additionalProperties": False, "properties": {}},
        },
    }
    assert _schema_errors(schema, {"pools": {}}) == []
    [error] = _schema_errors(schema, {"pools": {"defaultLimt": 8}})
    assert error.startswith("pools: Additional properties")


def test_deploy_files_pin_the_project_dagster_version():
    version = _dagster_pin()
    assert _script_version() == version
    assert f"--version {version}" in HELM_VALUES.read_text()
    assert f"chart version {version}" in HELM_VALUES.read_text()


def _chart_files() -> tuple[Path, Path]:
    """The chart's schema and defaults, or skip when they were never downloaded."""
    version = _script_version()
    schema_path = Path(
        os.environ.get("DAGSTER_HELM_SCHEMA")
        or REPO / ".local/helm" / version / "values.schema.json"
    )
    if not schema_path.is_file():
        pytest.skip(
            f"Dagster Helm chart schema {version} not found at {schema_path}: no package "
            "registry ships it; run `make helm-schema` (needs GitHub) or point "
            "DAGSTER_HELM_SCHEMA at a copy"
        )
    defaults_path = schema_path.with_name("values.yaml")
    assert defaults_path.is_file(), (
        f"{defaults_path} (the chart's default values.yaml) must sit beside the schema: Helm "
        "validates the defaults merged with our values; deploy/helm/fetch_schema.sh fetches both"
    )
    pins = FETCH_SCRIPT.with_name(f"dagster-chart-{version}.sha256")
    if pins.is_file():
        for line in pins.read_text().splitlines():
            digest, name = line.split()
            path = schema_path.with_name(name)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, (
                f"{path} is not the pinned chart file ({pins.name}); fetch it again"
            )
    return schema_path, defaults_path


def _merged_values(defaults_path: Path, values: dict) -> dict:
    return _coalesce(yaml.safe_load(defaults_path.read_text()), values)


def test_helm_values_validate_against_chart_schema():
    schema_path, defaults_path = _chart_files()
    schema = yaml.safe_load(schema_path.read_text())
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert _schema_errors(schema, _merged_values(defaults_path, values)) == []


@pytest.mark.parametrize(
    "path, bad",
    [
        # Typos in sections the chart closes: the schema has to catch them.
        (("concurrency", "pools"), {"defaultLimt": 8}),
        (("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator"), {"dequeue": 5}),
        (("postgresql",), {"postgresqlHost": 5432}),
    ],
)
def test_chart_schema_rejects_a_broken_values_file(path, bad):
    schema_path, defaults_path = _chart_files()
    schema = yaml.safe_load(schema_path.read_text())
    values = yaml.safe_load(HELM_VALUES.read_text())
    section = values
    for key in path:
        section = section.setdefault(key, {})
    section.update(bad)
    assert _schema_errors(schema, _merged_values(defaults_path, values)) != []


def test_helm_values_and_instance_yaml_agree():
    """The chart renders its own instance config from values.yaml; the settings that shape
    what runs when must match deploy/dagster.yaml."""
    helm = yaml.safe_load(HELM_VALUES.read_text())
    instance = yaml.safe_load(INSTANCE_YAML.read_text())

    runs, helm_runs = instance["concurrency"]["runs"], helm["concurrency"]["runs"]
    assert helm["concurrency"]["enabled"] is True
    assert helm_runs["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert helm_runs["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    pools, helm_pools = instance["concurrency"]["pools"], helm["concurrency"]["pools"]
    assert helm_pools["defaultLimit"] == pools["default_limit"]
    assert helm_pools["granularity"] == pools["granularity"]

    coordinator = helm["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert "tagConcurrencyLimits" not in coordinator["config"]["queuedRunCoordinator"]
    assert "maxConcurrentRuns" not in coordinator["config"]["queuedRunCoordinator"]

    retries, helm_retries = instance["run_retries"], helm["dagsterDaemon"]["runRetries"]
    assert helm_retries["enabled"] == retries["enabled"]
    assert helm_retries["maxRetries"] == retries["max_retries"]
    assert helm_retries["retryOnAssetOrOpFailure"] == retries["retry_on_asset_or_op_failure"]

    monitoring = instance["run_monitoring"]
    helm_monitoring = helm["dagsterDaemon"]["runMonitoring"]
    assert helm_monitoring["enabled"] == monitoring["enabled"]
    assert helm_monitoring["maxResumeRunAttempts"] == monitoring["max_resume_run_attempts"]
    assert (
        helm_monitoring["freeSlotsAfterRunEndSeconds"]
        == monitoring["free_slots_after_run_end_seconds"]
    )

    assert (
        helm["postgresql"]["postgresqlScheme"]
        == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    )
    assert helm["telemetry"]["enabled"] == instance["telemetry"]["enabled"]


@pytest.fixture
def deploy_instance(postgres_database_url, tmp_path, monkeypatch):
    """deploy/dagster.yaml, copied unchanged into a fresh DAGSTER_HOME, on a fresh database."""
    url = sa.engine.make_url(postgres_database_url)
    if (url.port or 5432) != 5432:
        pytest.skip(f"deploy/dagster.yaml pins port 5432; the test server is on {url.port}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_USERNAME", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_DB", url.database)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        yield instance, postgres_database_url
    finally:
        instance.dispose()


def test_deploy_instance_uses_postgres_and_the_file_settings(deploy_instance):
    instance, _ = deploy_instance
    raw = yaml.safe_load(INSTANCE_YAML.read_text())

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

    coordinator = instance.run_coordinator
    assert isinstance(coordinator, QueuedRunCoordinator)
    assert (
        coordinator.dequeue_interval_seconds
        == (raw["run_coordinator"]["config"]["dequeue_interval_seconds"])
    )
    concurrency = instance.get_concurrency_config()
    runs = raw["concurrency"]["runs"]
    assert concurrency.run_queue_config.max_concurrent_runs == runs["max_concurrent_runs"]
    assert concurrency.run_queue_config.tag_concurrency_limits == runs["tag_concurrency_limits"]
    pools = raw["concurrency"]["pools"]
    assert concurrency.pool_config.default_pool_limit == pools["default_limit"]
    assert concurrency.pool_config.pool_granularity.value == pools["granularity"]

    assert instance.run_retries_enabled is raw["run_retries"]["enabled"]
    assert instance.run_retries_max_retries == raw["run_retries"]["max_retries"]
    assert instance.run_retries_retry_on_asset_or_op_failure is False
    assert instance.run_monitoring_enabled is True
    assert instance.run_monitoring_settings == raw["run_monitoring"]
    assert instance.telemetry_enabled is False


def test_deploy_instance_stores_and_reads_a_run(deploy_instance, tmp_path):
    instance, database_url = deploy_instance

    @dg.asset
    def deploy_check() -> int:
        return 1

    result = dg.materialize(
        [deploy_check],
        instance=instance,
        resources={"io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))},
    )
    assert result.success

    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    event = instance.get_latest_materialization_event(dg.AssetKey("deploy_check"))
    assert event is not None and event.run_id == result.run_id
    # Written to the fresh database the environment points at, not to some other storage.
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT run_id FROM runs")).scalars().all()
    finally:
        engine.dispose()
    assert stored == [result.run_id]
