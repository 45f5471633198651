import subprocess
import sys

import dagster as dg
from click.testing import CliRunner

from prediction_pipeline.cli import main
from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import make_engine
from prediction_pipeline_tests.pipeline_helpers import ingest_days


def cli(url: str, *args: str, **env) -> str:
    result = CliRunner().invoke(main, ["--database-url", url, *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_db_upgrade_and_markets_show(empty_database_url):
    head = migrate.head_revision()
    assert f"at {head}" in cli(empty_database_url, "db", "upgrade")
    assert f"current: {head}" in cli(empty_database_url, "db", "current")
    assert "no markets" in cli(empty_database_url, "markets", "show")
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(empty_database_url, instance, days=1, size=50)
    out = cli(empty_database_url, "markets", "show", "--limit", "3", "--status", "open")
    assert len(out.strip().splitlines()) == 4 and "syn-" in out


def test_models_registry_commands(database_url, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = cli(
        database_url,
        "models",
        "add",
        "openai/gpt-4o:online",
        "--web-search",
        "--max-in-flight",
        "3",
        "--rps",
        "1.5",
        "--max-cost-usd",
        "2",
        DAGSTER_HOME=str(home),
    )
    assert "enabled (openrouter)" in out and "added partition 'openai/gpt-4o:online'" in out
    listing = cli(database_url, "models", "list")
    assert "baseline/market" in listing and "baseline/momentum" in listing
    line = next(r for r in listing.splitlines() if r.startswith("openai/gpt-4o:online"))
    assert line.split()[1:] == ["openrouter", "true", "true", "3", "1.5", "2"]
    assert "disabled" in cli(database_url, "models", "disable", "openai/gpt-4o:online")
    assert "enabled" in cli(
        database_url, "models", "enable", "openai/gpt-4o:online", DAGSTER_HOME=""
    )
    bad = CliRunner().invoke(main, ["--database-url", database_url, "models", "add", "a b"])
    assert bad.exit_code != 0 and "invalid model slug" in bad.output
    missing = CliRunner().invoke(main, ["--database-url", database_url, "models", "enable", "x/y"])
    assert missing.exit_code != 0 and "no model 'x/y'" in missing.output
    assert "no open failures" in cli(database_url, "predictions", "failures")


def test_unmigrated_database_is_reported(empty_database_url):
    engine = make_engine(empty_database_url)
    assert migrate.current_revision(engine) is None
    assert "current: none" in cli(empty_database_url, "db", "current")


def test_on_demand_commands(database_url):
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(database_url, instance, days=1, size=30)
    market = cli(database_url, "markets", "show", "--limit", "1", "--json")
    source_id = __import__("json").loads(market)["source_id"]

    assert "balance 4" in cli(database_url, "credits", "grant", "bob@example.com", "4")
    request_id = cli(
        database_url, "predict", source_id, "baseline/market", "--user", "bob@example.com"
    ).strip()
    assert cli(database_url, "status", request_id).startswith(f"queued request {request_id}")
    session_id = cli(
        database_url,
        "session",
        "create",
        "--market",
        source_id,
        "--models",
        "baseline/market,baseline/momentum",
        "--user",
        "bob@example.com",
    ).strip()
    out = cli(database_url, "status", session_id)
    assert out.startswith(f"queued session {session_id}") and "balance: 1" in out

    broke = CliRunner().invoke(
        main,
        [
            "--database-url",
            database_url,
            "session",
            "create",
            "--market",
            source_id,
            "--models",
            "baseline/market,baseline/momentum",
            "--user",
            "bob@example.com",
        ],
    )
    assert broke.exit_code != 0 and "costs 2 credits; the balance is 1" in broke.output
    unknown = CliRunner().invoke(main, ["--database-url", database_url, "status", "nope"])
    assert unknown.exit_code != 0 and "no request or session 'nope'" in unknown.output
    assert "no alerts" in cli(database_url, "alerts")


def test_the_cli_starts_without_importing_dagster_or_the_web_stack():
    """Every command pays for what the CLI imports: Dagster alone is about a second of
    start-up, so it (and the HTTP API's stack) is imported only by the commands using it."""
    heavy = ("dagster", "fastapi", "uvicorn", "httpx", "alembic")
    code = (
        "import sys, prediction_pipeline.cli; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(done.stdout.split()).isdisjoint(heavy), done.stdout
