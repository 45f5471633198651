"""The import contracts of pyproject.toml ([tool.importlinter]) hold for the package, and
each of them can fail: a copy of the package with one offending import breaks exactly the
contract that forbids it.

`lint-imports` runs as a subprocess, as `make lint` runs it, from the folder that holds the
package (it puts its working directory first on sys.path, so the copy is what it reads).
Imports are read statically: nothing in the package is executed.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = "Layers: cli/api/defs -> resources -> services -> clients/store -> core"
CORE_PURE = "core imports no Dagster, SQLAlchemy or httpx"
SERVICES_NO_DAGSTER = "services import no Dagster (the CLI and the HTTP API call them too)"
DEFS_WIRING = "defs reach clients and store only through resources and services"
CONTRACTS = (LAYERS, CORE_PURE, SERVICES_NO_DAGSTER, DEFS_WIRING)


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())",
        "--no-logo",
        "--no-cache",  # never reuse a graph built for another copy
        "--config",
        str(project / "pyproject.toml"),
    ]
    # A wide terminal: contract names and import chains on one line each.
    env = {**os.environ, "PYTHONPATH": str(project), "COLUMNS": "300"}
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def verdict(output: str, contract: str) -> str:
    """KEPT or BROKEN, as the report's summary line for `contract` says."""
    for line in output.splitlines():
        if line.startswith(f"{contract} "):
            return line.removeprefix(f"{contract} ").split()[0]
    raise AssertionError(f"no line for {contract!r} in:\n{output}")


def test_the_package_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {verdict(result.stdout, c) for c in CONTRACTS} == {"KEPT"}


@pytest.fixture(scope="module")
def pristine_copy(tmp_path_factory) -> Path:
    """The package and its pyproject.toml, copied once; each case copies this again."""
    project = tmp_path_factory.mktemp("pristine")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(
        ROOT / "prediction_pipeline",
        project / "prediction_pipeline",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return project


@pytest.mark.parametrize(
    ("module", "offending_import", "broken", "named"),
    [
        pytest.param(
            "defs/scoring/assets.py",
            "from prediction_pipeline.store import scoring",
            {DEFS_WIRING},
            "prediction_pipeline.defs.scoring.assets -> prediction_pipeline.store.scoring",
            id="defs-imports-store",
        ),
        pytest.param(
            "defs/on_demand/sensors.py",
            "from prediction_pipeline.clients import webhook",
            {DEFS_WIRING},
            "prediction_pipeline.defs.on_demand.sensors -> prediction_pipeline.clients.webhook",
            id="defs-imports-a-client",
        ),
        pytest.param(
            "core/markets.py",
            "import dagster",
            # services import core, so they now reach Dagster too
            {CORE_PURE, SERVICES_NO_DAGSTER},
            "prediction_pipeline.core.markets -> dagster",
            id="core-imports-dagster",
        ),
        pytest.param(
            "core/scoring.py",
            "import sqlalchemy",
            {CORE_PURE},
            "prediction_pipeline.core.scoring -> sqlalchemy",
            id="core-imports-sqlalchemy",
        ),
        pytest.param(
            "services/markets.py",
            "from prediction_pipeline import resources",
            {LAYERS, SERVICES_NO_DAGSTER},  # resources are Dagster resources
            "prediction_pipeline.services.markets -> prediction_pipeline.resources",
            id="services-import-resources",
        ),
        pytest.param(
            "api/app.py",
            "from prediction_pipeline.defs.markets import assets",
            {LAYERS},  # api and defs are independent siblings of one layer
            "prediction_pipeline.api.app -> prediction_pipeline.defs.markets.assets",
            id="api-imports-defs",
        ),
    ],
)
def test_an_offending_import_breaks_its_contract(
    pristine_copy, tmp_path, module, offending_import, broken, named
):
    project = tmp_path / "project"
    shutil.copytree(pristine_copy, project)
    with (project / "prediction_pipeline" / module).open("a") as source:
        source.write(f"\n{offending_import}  # injected by test_layers\n")

    result = lint_imports(project)

    assert result.returncode != 0
    assert {c for c in CONTRACTS if verdict(result.stdout, c) == "BROKEN"} == broken, result.stdout
    assert named in result.stdout, result.stdout
