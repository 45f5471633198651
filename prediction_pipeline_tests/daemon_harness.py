"""A harness for end-to-end runs against real `dagster-daemon` / `dagster-webserver` processes.

Used by the `daemon` tests and by `benchmarks/`: no pytest here.

- the instance: `instance_config` derives a `dagster.yaml` from the repo's own (same
  `concurrency`, run retries and monitoring; optionally shorter intervals, or dagster-postgres
  storage), `write_instance_yaml` puts it in a temporary DAGSTER_HOME, `open_instance` opens it
  in this process (the test reads runs, events and ticks the daemon wrote);
- subprocesses: `Service` (one process group, output in a log file, stopped with SIGTERM then
  SIGKILL of its group), `Services` (every process of one test, stopped by its ExitStack),
  `cli`, `daemon_command`, `webserver_command`, `service_env`, `free_port`;
- waiting: `wait_until` (polls a condition while checking that the services are alive),
  `wait_for_location` (the webserver loaded the code location), `sensor_ticks` /
  `wait_for_sensor_ticks` (ticks the daemon recorded for a sensor);
- `failure_report` (what failed in some runs), `postgres_database` (a throwaway database).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import httpx
import sqlalchemy as sa
import yaml
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import InstigatorState, InstigatorTick, TickStatus

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 90.0
# Variables the code location reads: a test passes the ones it wants and inherits none.
APP_ENV_PREFIXES = ("PREDICTION_PIPELINE_", "OPENROUTER_", "POLYMARKET_")
PG_ADMIN_URL = os.environ.get(
    "PREDICTION_PIPELINE_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)

T = TypeVar("T")

LOCATION_STATUS_QUERY = """
query LocationStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


# -- the instance -----------------------------------------------------------------------------


def repo_instance_config() -> dict:
    """The repo's `dagster.yaml`, as a dict."""
    return yaml.safe_load((REPO / "dagster.yaml").read_text())


def postgres_storage(url: str) -> dict:
    """dagster-postgres storage (runs, event logs, schedules) in the database at `url`."""
    return {"postgres": {"postgres_url": url}}


def instance_config(
    *,
    dequeue_interval_seconds: float | None = None,
    monitoring_poll_seconds: float | None = None,
    storage: dict | None = None,
) -> dict:
    """The repo's `dagster.yaml`, its limits untouched; optionally a shorter dequeue interval,
    a shorter run-monitoring poll, or other storage (default: SQLite under DAGSTER_HOME)."""
    config = repo_instance_config()
    if dequeue_interval_seconds is not None:
        config["run_coordinator"]["config"]["dequeue_interval_seconds"] = dequeue_interval_seconds
    if monitoring_poll_seconds is not None:
        config["run_monitoring"]["poll_interval_seconds"] = monitoring_poll_seconds
    if storage is not None:
        config["storage"] = storage
    return config


def write_instance_yaml(home: Path, config: dict) -> dict:
    """Write `config` as `home/dagster.yaml` (creating `home`); returns it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def open_instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


# -- subprocesses -----------------------------------------------------------------------------


class Service:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path):
        self.name, self.log_path = name, log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its children (code servers, run workers) share its group
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the group this test started, then SIGKILL after `timeout`."""
        try:
            if self.alive():
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.proc.wait(timeout=10)
            # Children left in the group (a run worker, a code server) go too.
            self._signal(signal.SIGKILL)
        finally:
            self._log.close()

    def _signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def log_tail(self, chars: int = 20_000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return text[-chars:]


class Services:
    """The subprocesses of one test or benchmark, each stopped by `stack` (last started, first
    stopped), with one environment and their logs in `log_dir`."""

    def __init__(self, stack: ExitStack, env: dict[str, str], log_dir: Path):
        self.stack, self.env, self.log_dir = stack, env, log_dir
        self.started: list[Service] = []

    def start(self, name: str, args: list[str]) -> Service:
        service = Service(name, args, self.env, self.log_dir / f"{name}.log")
        self.started.append(service)
        self.stack.callback(service.stop)
        return service

    def check_alive(self) -> None:
        for service in self.started:
            assert service.alive(), f"{service.name} exited with {service.proc.returncode}"

    def print_logs(self, chars: int = 20_000) -> None:
        for service in self.started:
            print(f"\n===== {service.name} log (tail) =====\n{service.log_tail(chars)}")


def cli(script: str, module: str) -> list[str]:
    """The console script next to this interpreter (the venv's), else `python -m module`."""
    path = Path(sys.executable).parent / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def daemon_command() -> list[str]:
    return cli("dagster-daemon", "dagster._daemon") + ["run", "-w", "workspace.yaml"]


def webserver_command(port: int) -> list[str]:
    return cli("dagster-webserver", "dagster_webserver") + [
        "-w",
        "workspace.yaml",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]


def service_env(home: Path, **variables: str) -> dict[str, str]:
    """This process's environment without the code location's own variables (a developer's
    exported PREDICTION_PIPELINE_SMTP_URL must not leak into a test), plus DAGSTER_HOME,
    unbuffered output and `variables` (e.g. PREDICTION_PIPELINE_DATABASE_URL=...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(APP_ENV_PREFIXES)}
    env.update(DAGSTER_HOME=str(home), PYTHONUNBUFFERED="1", **variables)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- waiting ----------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str | Callable[[], str],
    services: Services | None = None,
    interval: float = 0.5,
) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail if a service
    died or after `timeout` seconds, saying `what` was awaited (a callable is asked then)."""
    deadline = time.monotonic() + timeout
    while True:
        if services is not None:
            services.check_alive()
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:.0f} s: {described}")
        time.sleep(interval)


def graphql(client: httpx.Client, query: str, variables: dict | None = None) -> dict:
    response = client.post("/graphql", json={"query": query, "variables": variables or {}})
    response.raise_for_status()
    payload = response.json()
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


def wait_for_location(
    client: httpx.Client, webserver: Service, timeout: float = STARTUP_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert webserver.alive(), "dagster-webserver exited during start-up"
        try:
            data = graphql(client, LOCATION_STATUS_QUERY)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            last = exc
        else:
            last = data
            entries = data["workspaceOrError"].get("locationEntries") or []
            loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
            if loaded:
                (entry,) = loaded
                error = entry["locationOrLoadError"]
                assert error["__typename"] == "RepositoryLocation", error
                return
        time.sleep(0.5)
    raise AssertionError(f"the webserver did not load the code location in time: {last}")


# -- sensor ticks -----------------------------------------------------------------------------


def sensor_state(instance: dg.DagsterInstance, name: str) -> InstigatorState | None:
    """The stored state of sensor `name`. A sensor with `default_status=RUNNING` gets one
    (status DECLARED_IN_CODE) when the daemon first evaluates it."""
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    found = [s for s in states if s.instigator_name == name]
    assert len(found) <= 1, f"several sensors named {name}: {found}"
    return found[0] if found else None


def sensor_ticks(
    instance: dg.DagsterInstance, name: str, *, after: float | None = None
) -> list[InstigatorTick]:
    """Ticks of sensor `name` the daemon recorded (after `after`, epoch s), oldest first."""
    state = sensor_state(instance, name)
    if state is None:
        return []
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
    return sorted(ticks, key=lambda tick: tick.timestamp)


FINISHED_TICK = (TickStatus.SUCCESS, TickStatus.SKIPPED, TickStatus.FAILURE)


def wait_for_sensor_ticks(
    instance: dg.DagsterInstance,
    name: str,
    count: int,
    *,
    after: float | None = None,
    timeout: float = 60.0,
    services: Services | None = None,
) -> list[InstigatorTick]:
    """Wait until sensor `name` has finished `count` ticks after `after`; returns them all."""

    def finished() -> list[InstigatorTick]:
        ticks = sensor_ticks(instance, name, after=after)
        done = [t for t in ticks if t.status in FINISHED_TICK]
        return done if len(done) >= count else []

    return wait_until(
        finished,
        timeout=timeout,
        services=services,
        what=lambda: (
            f"{count} finished ticks of {name}; have "
            f"{[(t.timestamp, t.status.value) for t in sensor_ticks(instance, name, after=after)]}"
        ),
    )


# -- reports ----------------------------------------------------------------------------------


def failure_report(instance: dg.DagsterInstance, records: Iterable[Any]) -> str:
    """Each run's status, partition, failure events and step errors."""
    lines = []
    for record in records:
        run = record.dagster_run
        lines.append(f"run {run.run_id} {run.tags.get('dagster/partition')}: {run.status.value}")
        for event in instance.all_logs(run.run_id):
            dagster_event = event.dagster_event
            if dagster_event is None or not dagster_event.is_failure:
                continue
            lines.append(f"  {dagster_event.event_type_value}: {dagster_event.message}")
            if dagster_event.is_step_failure and dagster_event.step_failure_data.error:
                lines.append(dagster_event.step_failure_data.error.to_string())
    return "\n".join(lines)


def run_event_times(
    instance: dg.DagsterInstance, run_id: str, types: Sequence[dg.DagsterEventType]
) -> dict[dg.DagsterEventType, float]:
    """Epoch timestamps of the first event of each type in `types` (missing types left out)."""
    times = {}
    for event_type in types:
        entries = instance.all_logs(run_id, of_type=event_type)
        if entries:
            times[event_type] = min(entry.timestamp for entry in entries)
    return times


# -- PostgreSQL -------------------------------------------------------------------------------


@contextmanager
def postgres_database(prefix: str = "pp_daemon", admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A new empty database on the server of `admin_url`, dropped (connections forced out) on
    exit; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield (
                sa.engine.make_url(admin_url)
                .set(database=name)
                .render_as_string(hide_password=False)
            )
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
