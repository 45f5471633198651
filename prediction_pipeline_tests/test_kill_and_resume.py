"""A run killed mid-partition (SIGKILL, no cleanup) and re-executed stores no duplicate and
asks the model only for the markets that were still missing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from dagster._core.instance.ref import InstanceRef

from prediction_pipeline.store import models as model_store
from prediction_pipeline.store.tables import predictions as predictions_table
from prediction_pipeline_tests.fakes.openrouter_server import FakeOpenRouterServer
from prediction_pipeline_tests.pipeline_helpers import DAY, ingest_days

MODEL = "acme/slow-oracle"
KEY = "sk-test-kill"
TOP = 20
REPO = Path(__file__).resolve().parents[1]


def _command(partition_key: str) -> list[str]:
    config = {"ops": {"predictions": {"config": {"top_markets_count": TOP}}}}
    return [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "prediction_pipeline.definitions",
        "--select",
        "predictions",
        "--partition",
        partition_key,
        "--config-json",
        json.dumps(config),
    ]


def _count(engine) -> tuple[int, int]:
    cols = (predictions_table.c.market_id, predictions_table.c.model_slug, predictions_table.c.day)
    with engine.connect() as conn:
        total = conn.scalar(sa.select(sa.func.count()).select_from(predictions_table))
        distinct = conn.scalar(
            sa.select(sa.func.count()).select_from(sa.select(*cols).distinct().subquery())
        )
    return total, distinct


def test_killed_run_resumes_without_duplicates(database_url, engine, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    ingest_days(database_url, instance, days=1, size=150)
    with engine.begin() as conn:
        model_store.upsert_model(
            conn,
            model_store.ModelSpec(MODEL, "openrouter", max_in_flight=2, requests_per_second=50),
        )
    instance.add_dynamic_partitions("models", [MODEL])
    instance.dispose()

    with FakeOpenRouterServer(api_key=KEY, latency_mean=0.4, latency_sigma=0.1) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "PREDICTION_PIPELINE_DATABASE_URL": database_url,
            "PREDICTION_PIPELINE_DATA_DIR": str(tmp_path),
            "OPENROUTER_API_KEY": KEY,
            "OPENROUTER_BASE_URL": server.base_url,
        }
        command = _command(f"{DAY.isoformat()}|{MODEL}")
        first = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while _count(engine)[0] < 4:
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first run stored nothing in time"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)  # no cleanup, no finally blocks: a crash
        first.wait(timeout=30)
        time.sleep(1.0)  # let answers already on the wire land (they are discarded)
        killed_at, _ = _count(engine)
        assert 4 <= killed_at < TOP
        requests_before = server.request_count

        second = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180
        )
        assert second.returncode == 0, second.stderr[-3000:]
        total, distinct = _count(engine)
        assert total == distinct == TOP
        # Only the missing markets were asked again.
        assert server.request_count - requests_before == TOP - killed_at
