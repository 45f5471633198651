"""Shared fixtures: an app database on SQLite and on PostgreSQL, migrated to head.

PostgreSQL tests use the server at 127.0.0.1:5432 (user postgres, trust auth), each test
in a database of its own. They are skipped only when CI is unset and no server answers;
in CI a missing server is a failure.

Each test's migrated database is a copy of one migrated once per test process: a file copy
on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL. Migrating for every test cost 0.2 s
(SQLite) and 0.4 s (PostgreSQL) each, for hundreds of tests; the migrations themselves are
tested on empty databases (`empty_database_url`, test_migrations.py).

A test that asks for the `evaluation_world` fixture gets a copy of a database that also holds
evaluation_world.build_world's three weeks of markets and predictions, built once per test
process and engine (building it took 2-5 s per test, for 40 tests).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import make_engine
from prediction_pipeline_tests.evaluation_world import build_world

PG_ADMIN_URL = os.environ.get(
    "PREDICTION_PIPELINE_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def _postgres_answers() -> bool:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sa.exc.OperationalError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The daemon tests first. They are the longest (15-75 s each, mostly waiting on ticks
    and runs), and `make test` (`-n 3 --maxschedchunk 8`) hands each worker a first chunk of
    8 tests in this order: they all run one after another on the first worker, from the
    start, while the other two take the remaining tests. Handed out in the alphabetical
    order they landed on one worker late, which ended 150 s after the other two; spread over
    three workers they ran at once and slowed each other down until a daemon test's queue
    assertions failed."""
    daemon = sum(1 for item in items if item.get_closest_marker("daemon"))
    chunk = config.getoption("maxschedchunk", None)
    if chunk and daemon > chunk:
        raise pytest.UsageError(
            f"{daemon} daemon tests do not fit in one chunk of --maxschedchunk {chunk}: "
            "raise it in the Makefile so that they stay on one worker"
        )
    items.sort(key=lambda item: item.get_closest_marker("daemon") is None)


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    if _postgres_answers():
        return True
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but PostgreSQL does not answer at {PG_ADMIN_URL}")
    return False


def _create_pg_database(template: str | None = None) -> str:
    """A new database, empty or a copy of `template` (which no one may be connected to)."""
    name = f"pp_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    admin.dispose()
    return str(sa.engine.make_url(PG_ADMIN_URL).set(database=name))


def _migrate(url: str) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()  # no connection left open: a template must have none, a file is closed


def _drop_pg_database(url: str) -> None:
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path, postgres_available) -> Iterator[str]:
    """A URL to an empty app database on each engine (not migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    if not postgres_available:
        pytest.skip("PostgreSQL does not answer at 127.0.0.1:5432 and CI is unset")
    url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(url)


@pytest.fixture
def postgres_database_url(postgres_available) -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL database (for tests that only make sense there)."""
    if not postgres_available:
        pytest.skip("PostgreSQL does not answer at 127.0.0.1:5432 and CI is unset")
    url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(url)


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory) -> Path:
    """A SQLite app database at head, for tests to copy."""
    path = tmp_path_factory.mktemp("migrated") / "app.db"
    _migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres_template(postgres_available) -> Iterator[str]:
    """The name of a PostgreSQL database at head, for tests to copy (one per test process:
    xdist workers do not share it)."""
    url = _create_pg_database()
    try:
        _migrate(url)
        yield sa.engine.make_url(url).database
    finally:
        _drop_pg_database(url)


def _build_world(url: str) -> None:
    engine = make_engine(url)
    build_world(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def world_sqlite_file(migrated_sqlite_file, tmp_path_factory) -> Path:
    """A SQLite app database at head holding evaluation_world's world, for tests to copy."""
    path = tmp_path_factory.mktemp("world") / "app.db"
    shutil.copyfile(migrated_sqlite_file, path)
    _build_world(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def world_postgres_template(migrated_postgres_template) -> Iterator[str]:
    """The name of a PostgreSQL database at head holding evaluation_world's world."""
    url = _create_pg_database(template=migrated_postgres_template)
    try:
        _build_world(url)
        yield sa.engine.make_url(url).database
    finally:
        _drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, postgres_available) -> Iterator[str]:
    """A URL to an app database migrated to head, on SQLite and on PostgreSQL (holding
    evaluation_world's world when the test asks for the `evaluation_world` fixture)."""
    world = "evaluation_world" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        template = "world_sqlite_file" if world else "migrated_sqlite_file"
        shutil.copyfile(request.getfixturevalue(template), path)
        yield f"sqlite:///{path}"
        return
    if not postgres_available:
        pytest.skip("PostgreSQL does not answer at 127.0.0.1:5432 and CI is unset")
    template = "world_postgres_template" if world else "migrated_postgres_template"
    url = _create_pg_database(template=request.getfixturevalue(template))
    try:
        yield url
    finally:
        _drop_pg_database(url)


@pytest.fixture
def engine(database_url) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def evaluation_world(engine) -> sa.Engine:
    """The test's engine, over a copy of a database holding evaluation_world's world
    (`database_url` picks that template when a test asks for this fixture)."""
    return engine
