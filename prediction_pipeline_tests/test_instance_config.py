"""The local and production instance configs validate and carry the per-model run limit."""

from pathlib import Path

import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["dagster.yaml", "deploy/dagster.yaml"])
def test_instance_config_validates_with_per_model_limit(path, monkeypatch):
    for name in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    config_file = REPO / path
    config, _ = dagster_instance_config(str(config_file.parent), config_filename=config_file.name)
    runs = config["concurrency"]["runs"]
    [limit] = [
        rule for rule in runs["tag_concurrency_limits"] if rule["key"] == "dagster/partition/model"
    ]
    assert limit["value"] == {"applyLimitPerUniqueValue": True} and limit["limit"] >= 1
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    # Limits live in the concurrency section only: mixing them into run_coordinator is an error.
    raw = yaml.safe_load(config_file.read_text())
    assert "tag_concurrency_limits" not in raw["run_coordinator"].get("config", {})
