"""A migrated app database shared by one test module, and helpers that give each test rows
of its own (a fresh market, model and user), so the guard tests need no migration per test.

Used by the tests of the store's guards and of the scenarios around them: every row a test
writes carries keys no other test uses, so tests cannot see each other's rows.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from prediction_pipeline.core.forecast import ForecastResult, MarketContext
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import users as user_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import markets
from prediction_pipeline_tests import conftest

DAY = dt.date(2026, 11, 2)
_serial = itertools.count(1)


def database_engine(kind: str, tmp_path_factory) -> Iterator[sa.Engine]:
    """An engine on a migrated database of `kind` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('guards') / 'app.db'}"
    else:
        if not conftest._postgres_answers():
            if conftest.os.environ.get("CI"):
                pytest.fail(f"CI is set but PostgreSQL does not answer at {conftest.PG_ADMIN_URL}")
            pytest.skip("PostgreSQL does not answer at 127.0.0.1:5432 and CI is unset")
        url = conftest._create_pg_database()
    engine = make_engine(url)
    migrate.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        if kind != "sqlite":
            conftest._drop_pg_database(url)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_serial)}"


def new_model(engine: sa.Engine) -> str:
    slug = unique("acme/guard")
    with engine.begin() as conn:
        model_store.upsert_model(conn, model_store.ModelSpec(slug, "openrouter"))
    return slug


def new_market(engine: sa.Engine) -> int:
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        return conn.scalar(
            sa.insert(markets)
            .values(
                source="synthetic",
                source_id=unique("m"),
                question="Will it rain?",
                tags=[],
                outcomes=["Yes", "No"],
                yes_price=0.4,
                status="open",
                observed_day=DAY,
                first_seen_at=now,
                updated_at=now,
            )
            .returning(markets.c.id)
        )


def new_user(engine: sa.Engine, credits: int = 0) -> int:
    with engine.begin() as conn:
        user, _ = user_store.add_user(conn, f"{unique('user')}@example.com")
        if credits:
            credit_store.grant_credits(conn, user.id, credits)
    return user.id


def context(market_id: int, day: dt.date = DAY) -> MarketContext:
    return MarketContext(
        market_id=market_id, source_id=f"m{market_id}", question="Will it rain?", day=day
    )


def result(probability: float = 0.5, cost_usd: float = 0.0) -> ForecastResult:
    return ForecastResult(
        probability=probability, cost_usd=cost_usd, prompt_tokens=10, completion_tokens=5
    )
