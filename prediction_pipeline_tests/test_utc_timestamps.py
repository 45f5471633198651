"""Timestamps the store writes are UTC whatever the host's time zone, on SQLite and
PostgreSQL: a worker whose zone is Asia/Tokyo (UTC+9) must not stamp predictions, dead
letters or the digest ledger nine hours ahead (SQLite keeps naive values as they are;
PostgreSQL reads a naive value in the session's zone)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import sqlalchemy as sa

from prediction_pipeline.store import digest_ledger as ledger
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store.tables import digest_deliveries, prediction_failures, predictions
from prediction_pipeline_tests.guard_world import (
    DAY,
    context,
    database_engine,
    new_market,
    new_model,
    new_user,
    result,
)

LEASE = dt.timedelta(minutes=5)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


@pytest.fixture
def tokyo(monkeypatch):
    """The process's local time zone is UTC+9 for the test."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    assert dt.datetime.now().hour != dt.datetime.now(dt.UTC).hour
    yield
    monkeypatch.undo()
    time.tzset()


def assert_now_utc(*stamps: dt.datetime | None) -> None:
    """Each stamp is the real UTC time of the last few minutes (naive values taken as UTC)."""
    now = dt.datetime.now(dt.UTC)
    for stamp in stamps:
        assert stamp is not None
        aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
        assert dt.timedelta(0) <= now - aware < dt.timedelta(minutes=5), stamp


def test_predictions_and_dead_letters_are_stamped_in_utc(engine, tokyo):
    market, model = new_market(engine), new_model(engine)
    with engine.begin() as conn:
        prediction_store.record_failure(
            conn, market, model, DAY, kind="error", error_type="ValueError", error="boom",
            attempts=1,
        )  # fmt: skip
        prediction_id = prediction_store.store_prediction(conn, context(market), model, result())
        stored = conn.execute(sa.select(predictions).where(predictions.c.id == prediction_id)).one()
        letter = conn.execute(
            sa.select(prediction_failures).where(prediction_failures.c.market_id == market)
        ).one()
    assert_now_utc(stored.created_at, letter.first_failed_at, letter.last_failed_at)
    assert_now_utc(letter.resolved_at)


def test_the_digest_ledger_is_stamped_in_utc(engine, tokyo):
    skipped, sent, failed, released = (new_user(engine) for _ in range(4))

    def stamps(user_id: int) -> sa.Row:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(digest_deliveries).where(
                    digest_deliveries.c.user_id == user_id, digest_deliveries.c.day == DAY
                )
            ).one()

    with engine.begin() as conn:
        assert ledger.record_skips(conn, DAY, {skipped: ledger.NOTHING_NEW}) == {skipped}
        claimed = ledger.claim(
            conn, DAY, {u: f"<{u}@test>" for u in (sent, failed, released)},
            token="t", run_id="r", lease=LEASE,
        )  # fmt: skip
    assert claimed == {sent, failed, released}
    assert_now_utc(stamps(skipped).created_at, stamps(skipped).updated_at)
    assert_now_utc(stamps(sent).created_at, stamps(sent).updated_at)

    for step in (
        lambda conn: ledger.refresh_claim(conn, DAY, sent, "t", LEASE),
        lambda conn: ledger.claim_retry(conn, DAY, failed, "t", "421 busy", LEASE),
        lambda conn: ledger.mark_sent(conn, DAY, sent, "t", "provider-1"),
        lambda conn: ledger.mark_failed(conn, DAY, failed, "t", ledger.PERMANENT, "550"),
        lambda conn: ledger.release(conn, DAY, released, "t", "batch stopped"),
    ):
        with engine.begin() as conn:
            conn.execute(sa.update(digest_deliveries).values(updated_at=dt.datetime(2000, 1, 1)))
            assert step(conn) is True
        with engine.connect() as conn:
            touched = (
                conn.execute(
                    sa.select(digest_deliveries.c.updated_at).where(
                        digest_deliveries.c.user_id.in_([sent, failed, released]),
                        digest_deliveries.c.day == DAY,
                        digest_deliveries.c.updated_at > dt.datetime(2001, 1, 1),
                    )
                )
                .scalars()
                .all()
            )
        assert len(touched) == 1
        assert_now_utc(*touched)
    assert_now_utc(stamps(sent).sent_at)
