"""What the digest ledger writes into a user's row at each step, on SQLite and PostgreSQL:
the claim (Message-ID, run, lease on the database clock), each further attempt, the sent
and failed outcomes (provider id, error text cut to the column), a release, and the latest
digest sent before a day (the "since your last digest" line).

(Which rows a claim may take, and fencing by the claim token, are in test_store_guards.py.)
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from prediction_pipeline.store import digest_ledger as ledger
from prediction_pipeline.store.tables import digest_deliveries
from prediction_pipeline_tests.guard_world import DAY, database_engine, new_user
from prediction_pipeline_tests.test_store_guards import LEASE, claim, delivery, held

NEXT_DAY = DAY + dt.timedelta(days=1)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


def test_a_claim_records_its_message_run_and_a_lease_of_the_asked_length(engine):
    user = new_user(engine)
    assert claim(engine, user, "tok-a", run_id="run-a")
    row = delivery(engine, user)
    assert (row.status, row.attempts, row.message_id, row.run_id, row.claim_token) == (
        "pending",
        1,
        "<tok-a@example.com>",
        "run-a",
        "tok-a",
    )
    assert row.skip_reason is None and row.error_kind is None
    assert row.lease_expires_at - row.claimed_at == pytest.approx(LEASE, abs=dt.timedelta(0.001))
    with engine.connect() as conn:
        [seen] = ledger.deliveries(conn, DAY, [user]).values()
    assert (seen.user_id, seen.status, seen.attempts, seen.run_id, seen.claim_token) == (
        user,
        "pending",
        1,
        "run-a",
        "tok-a",
    )
    assert seen.lease_live and seen.error_kind is None and seen.claimed_at is not None


def test_a_retry_counts_the_attempt_keeps_the_error_and_renews_the_lease(engine):
    user = new_user(engine)
    claim(engine, user, "tok")
    long = dt.timedelta(hours=2)
    error = "421 " + "x" * 3000
    assert held(engine, ledger.claim_retry, DAY, user, "tok", error, long)
    row = delivery(engine, user)
    assert (row.attempts, row.status, row.last_error) == (2, "pending", error[:2000])
    assert row.lease_expires_at - row.claimed_at == pytest.approx(long, abs=dt.timedelta(0.001))
    assert held(engine, ledger.refresh_claim, DAY, user, "tok", LEASE)
    row = delivery(engine, user)
    assert row.lease_expires_at - row.claimed_at == pytest.approx(LEASE, abs=dt.timedelta(0.001))
    assert row.attempts == 2  # a refresh is not an attempt


def test_a_sent_row_keeps_the_providers_id_and_frees_the_claim(engine):
    user, quiet = new_user(engine), new_user(engine)
    claim(engine, user, "tok")
    claim(engine, quiet, "tok")
    assert held(engine, ledger.mark_sent, DAY, user, "tok", "q" * 300)
    assert held(engine, ledger.mark_sent, DAY, quiet, "tok", None)
    row, no_id = delivery(engine, user), delivery(engine, quiet)
    assert (row.status, row.provider_message_id, row.claim_token, row.lease_expires_at) == (
        "sent",
        "q" * 255,
        None,
        None,
    )
    assert row.sent_at is not None and no_id.provider_message_id is None


def test_a_failure_keeps_its_kind_and_the_error_cut_to_the_column(engine):
    user = new_user(engine)
    claim(engine, user, "tok")
    assert held(engine, ledger.mark_failed, DAY, user, "tok", ledger.PERMANENT, "5" * 2500)
    row = delivery(engine, user)
    assert (row.status, row.error_kind, row.last_error, row.claim_token) == (
        "failed",
        "permanent",
        "5" * 2000,
        None,
    )
    assert row.lease_expires_at is None and row.attempts == 1


def test_a_release_says_why_it_was_not_sent(engine):
    user = new_user(engine)
    claim(engine, user, "tok")
    assert held(engine, ledger.release, DAY, user, "tok", "the batch stopped")
    row = delivery(engine, user)
    assert (row.last_error, row.claim_token, row.lease_expires_at) == (
        "not sent: the batch stopped",
        None,
        None,
    )


def test_a_too_short_lease_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"pending_lease_minutes\) must be at least 1 minute"):
        ledger.check_lease(dt.timedelta(seconds=59))
    with pytest.raises(ValueError, match=r"got 0\.5: a claim that expires"):  # minutes given
        ledger.check_lease(dt.timedelta(seconds=30))


def test_the_previous_digest_is_the_latest_sent_before_the_day(engine):
    user, never, failed_only = new_user(engine), new_user(engine), new_user(engine)
    for day in (DAY - dt.timedelta(days=3), DAY - dt.timedelta(days=1), DAY, NEXT_DAY):
        claim(engine, user, "tok", day=day)
        held(engine, ledger.mark_sent, day, user, "tok", None)
    yesterday = DAY - dt.timedelta(days=1)
    claim(engine, failed_only, "tok", day=yesterday)
    held(engine, ledger.mark_failed, yesterday, failed_only, "tok", ledger.PERMANENT, "550")
    with engine.connect() as conn:
        previous = ledger.previous_digests(conn, DAY, [user, never, failed_only])
    assert set(previous) == {user}
    assert previous[user].day == DAY - dt.timedelta(days=1)
    assert previous[user].sent_at == delivery(engine, user, DAY - dt.timedelta(days=1)).sent_at


def test_each_step_stamps_the_row_with_its_time(engine):
    user = new_user(engine)
    claim(engine, user, "tok")
    steps = [
        (ledger.refresh_claim, ("tok", LEASE)),
        (ledger.claim_retry, ("tok", "421", LEASE)),
        (ledger.release, ("tok", "stopped")),
    ]
    for minute, (step, args) in enumerate(steps, start=1):
        at = dt.datetime(2030, 1, 1, 0, minute, tzinfo=dt.UTC)
        with engine.begin() as conn:
            assert step(conn, DAY, user, *args, now=at)
        assert delivery(engine, user).updated_at.replace(tzinfo=dt.UTC) == at
    claim(engine, user, "tok2")
    at = dt.datetime(2030, 1, 1, 1, 0, tzinfo=dt.UTC)
    with engine.begin() as conn:
        assert ledger.mark_failed(conn, DAY, user, "tok2", ledger.TRANSIENT, "421", now=at)
    assert delivery(engine, user).updated_at.replace(tzinfo=dt.UTC) == at
    claim(engine, user, "tok3")
    at = dt.datetime(2030, 1, 1, 2, 0, tzinfo=dt.UTC)
    with engine.begin() as conn:
        assert ledger.mark_sent(conn, DAY, user, "tok3", "queue-id", now=at)
    row = delivery(engine, user)
    assert row.updated_at.replace(tzinfo=dt.UTC) == row.sent_at.replace(tzinfo=dt.UTC) == at


def test_a_skip_is_not_an_attempt(engine):
    user = new_user(engine)
    with engine.begin() as conn:
        assert ledger.record_skips(conn, DAY, {user: ledger.OPTED_OUT}) == {user}
    row = delivery(engine, user)
    assert (row.status, row.skip_reason, row.attempts) == ("skipped", "opted_out", 0)


def test_a_failure_recorded_without_a_kind_is_claimable_again(engine):
    # Rows failed before failures had a kind: treated as transient (the next run retries),
    # never as permanent.
    user = new_user(engine)
    claim(engine, user, "tok")
    held(engine, ledger.mark_failed, DAY, user, "tok", ledger.TRANSIENT, "421")
    with engine.begin() as conn:
        conn.execute(
            sa.update(digest_deliveries)
            .where(digest_deliveries.c.user_id == user)
            .values(error_kind=None)
        )
    assert claim(engine, user, "tok2")
    assert delivery(engine, user).attempts == 2


def test_reads_are_of_the_users_and_the_day_asked_for(engine):
    day = dt.date(2030, 3, 1)
    asked, other, no_run, not_asked = (new_user(engine) for _ in range(4))
    claim(engine, not_asked, "tok", run_id="run-d", day=day)
    claim(engine, asked, "tok", run_id="run-a", day=day)
    claim(engine, other, "tok", run_id="run-b", day=day + dt.timedelta(days=1))
    claim(engine, other, "tok", run_id="run-c", day=day)
    held(engine, ledger.mark_sent, day, other, "tok", None)  # sent: its run holds nothing
    with engine.begin() as conn:
        ledger.claim(conn, day, {no_run: "<m@x>"}, token="t", run_id=None, lease=LEASE)
    with engine.connect() as conn:
        assert set(ledger.deliveries(conn, day, [asked])) == {asked}
        assert ledger.pending_run_ids(conn, day) == ["run-a", "run-d"]
        assert ledger.unresolved(conn, day, [asked, other, no_run]) == {asked: "run-a", no_run: ""}
        # `other` is still pending the next day, not this one.
        assert ledger.unresolved(conn, day + dt.timedelta(days=1), [other]) == {other: "run-b"}


def test_each_user_gets_their_own_previous_digest(engine):
    early, late, not_asked = new_user(engine), new_user(engine), new_user(engine)
    for user, back in [(early, 5), (early, 3), (late, 2), (not_asked, 1)]:
        day = DAY - dt.timedelta(days=back)
        claim(engine, user, "tok", day=day)
        held(engine, ledger.mark_sent, day, user, "tok", None)
    with engine.connect() as conn:
        previous = ledger.previous_digests(conn, DAY, [early, late])
    assert {user: p.day for user, p in previous.items()} == {
        early: DAY - dt.timedelta(days=3),
        late: DAY - dt.timedelta(days=2),
    }
