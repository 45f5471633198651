"""Alembic owns the schema: migrations build exactly the tables the code declares."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import metadata


def test_upgrade_fresh_database_matches_metadata(empty_database_url):
    engine = make_engine(empty_database_url)
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], diff
    engine.dispose()


def test_upgrade_is_repeatable_and_downgrade_round_trips(empty_database_url):
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # a second upgrade is a no-op
    migrate.downgrade(engine, "base")
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    migrate.upgrade(engine)
    assert set(metadata.tables) <= set(sa.inspect(engine).get_table_names())
    engine.dispose()
