"""The store's own guards, reached directly (no Python pre-filter in front of them), on
SQLite and PostgreSQL: the batch index and ON CONFLICT of predictions, dead letters, the
digest ledger's claim rule and fencing, and the credit ledger's debit and refund rules.

The services filter in Python first (`predicted_market_ids`, `is_claimable`, ...), so a test
through them never shows whether the database would have refused the write; these do.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import digest_ledger as ledger
from prediction_pipeline.store import digest_ledger_checks as ledger_checks
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import queue_items, queue_recovery
from prediction_pipeline.store import requests as request_store
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store.tables import (
    credit_ledger,
    digest_deliveries,
    prediction_failures,
    prediction_requests,
    prediction_sessions,
    predictions,
)
from prediction_pipeline_tests.guard_world import (
    DAY,
    context,
    database_engine,
    new_market,
    new_model,
    new_user,
    result,
    unique,
)

LEASE = dt.timedelta(minutes=5)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


def store(engine, market_id, model, origin="batch", day=DAY, **keys) -> int | None:
    with engine.begin() as conn:
        return prediction_store.store_prediction(
            conn, context(market_id, day), model, result(), origin=origin, **keys
        )


def rows(engine, table, *where) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(table).where(*where)).all()


# -- predictions: ON CONFLICT and the partial unique index ------------------------------------


def test_the_same_batch_prediction_stored_twice_returns_nothing_and_keeps_one_row(engine):
    market, model = new_market(engine), new_model(engine)
    first = store(engine, market, model)
    assert isinstance(first, int)
    assert store(engine, market, model) is None
    [row] = rows(engine, predictions, predictions.c.market_id == market)
    assert row.id == first and row.origin == "batch"


def test_the_batch_index_is_unique_without_on_conflict(engine):
    # A plain INSERT (no ON CONFLICT) of a second batch row is refused by the database itself.
    market, model = new_market(engine), new_model(engine)
    store(engine, market, model)
    [row] = rows(engine, predictions, predictions.c.market_id == market)
    duplicate = {k: v for k, v in row._mapping.items() if k != "id"}
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(predictions), duplicate)
    # Another day or another model is another key.
    assert store(engine, market, model, day=DAY + dt.timedelta(days=1)) is not None
    assert store(engine, market, new_model(engine)) is not None


def test_the_batch_index_covers_batch_rows_only(engine):
    # One batch, two request and one session prediction for the same (market, model, day):
    # all are stored; requests are unique per request id, sessions per (session, model).
    market, model = new_market(engine), new_model(engine)
    request_a, request_b, session = unique("r"), unique("r"), unique("s")
    assert store(engine, market, model, origin="request", request_id=request_a) is not None
    assert store(engine, market, model, origin="session", session_id=session) is not None
    assert store(engine, market, model) is not None  # the batch row after on-demand ones
    assert store(engine, market, model, origin="request", request_id=request_b) is not None
    assert store(engine, market, model, origin="request", request_id=request_a) is None
    assert store(engine, market, model, origin="session", session_id=session) is None
    assert store(engine, market, model) is None
    stored = rows(engine, predictions, predictions.c.market_id == market)
    assert sorted(r.origin for r in stored) == ["batch", "request", "request", "session"]
    # A second session asks the same model: its own row.
    assert store(engine, market, model, origin="session", session_id=unique("s")) is not None


def test_predicted_market_ids_counts_batch_rows_only(engine):
    batch_market, on_demand_market, model = (
        new_market(engine),
        new_market(engine),
        new_model(engine),
    )
    store(engine, batch_market, model)
    store(engine, on_demand_market, model, origin="request", request_id=unique("r"))
    store(engine, on_demand_market, model, origin="session", session_id=unique("s"))
    with engine.connect() as conn:
        assert prediction_store.predicted_market_ids(conn, model, DAY) == {batch_market}
        assert prediction_store.predicted_market_ids(conn, model, DAY + dt.timedelta(1)) == set()


def test_linked_prediction_finds_the_request_or_the_sessions_model(engine):
    market, model, other = new_market(engine), new_model(engine), new_model(engine)
    request_id, session_id = unique("r"), unique("s")
    request_row = store(engine, market, model, origin="request", request_id=request_id)
    session_row = store(engine, market, other, origin="session", session_id=session_id)
    with engine.connect() as conn:
        assert prediction_store.linked_prediction(conn, model, request_id=request_id).id == (
            request_row
        )
        assert (
            prediction_store.linked_prediction(conn, other, session_id=session_id).id == session_row
        )
        assert prediction_store.linked_prediction(conn, model, session_id=session_id) is None
        with pytest.raises(ValueError):
            prediction_store.linked_prediction(conn, model)


# -- dead letters -------------------------------------------------------------------------------


def fail(engine, market, model, attempts, origin="batch", error="boom", kind="error"):
    with engine.begin() as conn:
        prediction_store.record_failure(
            conn,
            market,
            model,
            DAY,
            kind=kind,
            error_type="InvalidForecast",
            error=error,
            attempts=attempts,
            origin=origin,
            run_id=unique("run"),
        )


def letters(engine, market) -> dict[str, sa.Row]:
    found = rows(engine, prediction_failures, prediction_failures.c.market_id == market)
    return {r.origin: r for r in found}


def test_dead_letter_attempts_add_up_and_a_settled_letter_is_reopened(engine):
    market, model = new_market(engine), new_model(engine)
    fail(engine, market, model, 2, error="first")
    fail(engine, market, model, 3, error="second")
    letter = letters(engine, market)["batch"]
    assert (letter.attempts, letter.last_error, letter.resolved_at) == (5, "second", None)
    store(engine, market, model)
    assert letters(engine, market)["batch"].resolved_at is not None
    fail(engine, market, model, 1, error="third", kind="budget")
    letter = letters(engine, market)["batch"]
    assert (letter.attempts, letter.kind, letter.resolved_at) == (6, "budget", None)
    assert letter.first_failed_at <= letter.last_failed_at
    with engine.connect() as conn:
        [open_letter] = [
            r for r in prediction_store.open_failures(conn, model=model) if r.market_id == market
        ]
        assert open_letter.attempts == 6
        assert prediction_store.open_failures(conn, model=model, day=DAY - dt.timedelta(1)) == []


def test_a_stored_prediction_settles_the_letter_of_its_own_origin_only(engine):
    market, model = new_market(engine), new_model(engine)
    fail(engine, market, model, 1, origin="batch")
    fail(engine, market, model, 1, origin="request")
    store(engine, market, model, origin="request", request_id=unique("r"))
    found = letters(engine, market)
    assert found["request"].resolved_at is not None
    assert found["batch"].resolved_at is None
    # Another model's or another day's prediction settles nothing either.
    store(engine, market, new_model(engine))
    store(engine, market, model, day=DAY + dt.timedelta(days=1))
    assert letters(engine, market)["batch"].resolved_at is None
    store(engine, market, model)
    assert letters(engine, market)["batch"].resolved_at is not None


# -- the digest ledger: claims, skips and fencing ---------------------------------------------


def delivery(engine, user_id, day=DAY) -> sa.Row | None:
    found = rows(
        engine,
        digest_deliveries,
        digest_deliveries.c.user_id == user_id,
        digest_deliveries.c.day == day,
    )
    return found[0] if found else None


def claim(engine, user_id, token, run_id=None, dead_runs=(), day=DAY) -> bool:
    with engine.begin() as conn:
        claimed = ledger.claim(
            conn,
            day,
            {user_id: f"<{token}@example.com>"},
            token=token,
            run_id=run_id or unique("run"),
            lease=LEASE,
            dead_runs=dead_runs,
        )
    return claimed == {user_id}


def skip(engine, user_id, dead_runs=(), reason=ledger.NOTHING_NEW) -> bool:
    with engine.begin() as conn:
        return ledger.record_skips(conn, DAY, {user_id: reason}, dead_runs=dead_runs) == {user_id}


def held(engine, fn, *args) -> bool:
    with engine.begin() as conn:
        return fn(conn, *args)


def expire_lease(engine, user_id, to=None) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(digest_deliveries)
            .where(digest_deliveries.c.user_id == user_id)
            .values(lease_expires_at=to)
        )


def sent(engine) -> int:
    user = new_user(engine)
    assert claim(engine, user, "a")
    assert held(engine, ledger.mark_sent, DAY, user, "a", "queue-1")
    return user


def failed(engine, kind) -> int:
    user = new_user(engine)
    assert claim(engine, user, "a")
    assert held(engine, ledger.mark_failed, DAY, user, "a", kind, "550 no such user")
    return user


def live_pending(engine) -> int:
    user = new_user(engine)
    assert claim(engine, user, "a", run_id="run-live")
    return user


def expired_pending(engine) -> int:
    user = live_pending(engine)
    expire_lease(engine, user, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    return user


def unleased_pending(engine) -> int:
    user = live_pending(engine)
    expire_lease(engine, user, None)  # claimed before leases existed (migration 0009)
    return user


def skipped(engine) -> int:
    user = new_user(engine)
    assert skip(engine, user)
    return user


STATES = {
    # state: (make the row, claimable by a new delivery)
    "absent": (new_user, True),
    "skipped": (skipped, True),
    "failed_transient": (lambda e: failed(e, ledger.TRANSIENT), True),
    "failed_permanent": (lambda e: failed(e, ledger.PERMANENT), False),
    "sent": (sent, False),
    "pending_live": (live_pending, False),
    "pending_expired": (expired_pending, True),
    "pending_unleased": (unleased_pending, True),
}


@pytest.mark.parametrize("state", list(STATES))
def test_a_claim_takes_exactly_the_claimable_rows_and_the_python_twin_agrees(engine, state):
    make, claimable = STATES[state]
    user = make(engine)
    before = delivery(engine, user)
    with engine.connect() as conn:
        row = ledger.deliveries(conn, DAY, [user]).get(user)
    assert ledger.is_claimable(row, dead_runs=()) is claimable
    assert claim(engine, user, "b") is claimable
    after = delivery(engine, user)
    if claimable:
        assert (after.status, after.claim_token) == (ledger.PENDING, "b")
        assert after.attempts == (before.attempts if before else 0) + 1
        assert after.lease_expires_at is not None and after.skip_reason is None
    else:
        assert after._mapping == before._mapping  # untouched


@pytest.mark.parametrize("state", list(STATES))
def test_skips_never_overwrite_a_row_a_claim_could_not_take(engine, state):
    make, claimable = STATES[state]
    user = make(engine)
    before = delivery(engine, user)
    assert skip(engine, user, reason=ledger.OPTED_OUT) is claimable
    after = delivery(engine, user)
    if claimable:
        assert (after.status, after.skip_reason, after.claim_token) == (
            ledger.SKIPPED,
            ledger.OPTED_OUT,
            None,
        )
    else:
        assert after._mapping == before._mapping


def test_a_live_claim_of_a_run_known_dead_is_taken_over(engine):
    user = live_pending(engine)
    with engine.connect() as conn:
        row = ledger.deliveries(conn, DAY, [user])[user]
        assert "run-live" in ledger.pending_run_ids(conn, DAY)
    assert row.lease_live and ledger.is_claimable(row, dead_runs={"run-live"})
    assert not ledger.is_claimable(row, dead_runs={"another-run"})
    assert not claim(engine, user, "b", dead_runs={"another-run"})
    assert claim(engine, user, "b", dead_runs={"run-live"})
    # A skip may take over a dead run's claim too.
    other = live_pending(engine)
    assert not skip(engine, other, dead_runs={"another-run"})
    assert skip(engine, other, dead_runs={"run-live"})


def test_only_the_holder_of_a_claim_can_settle_it(engine):
    user = live_pending(engine)  # held by token "a"
    before = delivery(engine, user)
    assert not held(engine, ledger.mark_sent, DAY, user, "b", "queue-b")
    assert not held(engine, ledger.mark_failed, DAY, user, "b", ledger.PERMANENT, "550")
    assert not held(engine, ledger.release, DAY, user, "b", "stopped")
    assert not held(engine, ledger.refresh_claim, DAY, user, "b", LEASE)
    assert not held(engine, ledger.claim_retry, DAY, user, "b", "421", LEASE)
    assert not held(engine, ledger.mark_sent, DAY + dt.timedelta(days=1), user, "a", "q")
    assert delivery(engine, user)._mapping == before._mapping
    assert held(engine, ledger.claim_retry, DAY, user, "a", "421 try later", LEASE)
    retried = delivery(engine, user)
    assert (retried.attempts, retried.last_error) == (2, "421 try later")
    assert held(engine, ledger.refresh_claim, DAY, user, "a", LEASE)
    assert held(engine, ledger.mark_sent, DAY, user, "a", "queue-a")
    done = delivery(engine, user)
    assert (done.status, done.provider_message_id, done.claim_token) == (
        ledger.SENT,
        "queue-a",
        None,
    )
    assert done.sent_at is not None and done.lease_expires_at is None
    assert not held(engine, ledger.mark_sent, DAY, user, "a", "queue-again")  # once


def test_a_claim_taken_over_fences_out_the_old_holder(engine):
    user = expired_pending(engine)  # "a" held it, its lease ran out
    assert claim(engine, user, "b")
    assert not held(engine, ledger.mark_sent, DAY, user, "a", "queue-a")
    assert not held(engine, ledger.release, DAY, user, "a", "stopped")
    assert held(engine, ledger.mark_failed, DAY, user, "b", ledger.TRANSIENT, "421")
    row = delivery(engine, user)
    assert (row.status, row.error_kind, row.claim_token) == (ledger.FAILED, ledger.TRANSIENT, None)


def test_a_released_claim_gives_its_attempt_back_and_is_claimable_at_once(engine):
    user = new_user(engine)
    assert claim(engine, user, "a")
    assert held(engine, ledger.release, DAY, user, "a", "the batch stopped")
    row = delivery(engine, user)
    assert (row.status, row.error_kind, row.attempts) == (ledger.FAILED, ledger.TRANSIENT, 0)
    assert row.last_error == "not sent: the batch stopped"
    assert claim(engine, user, "b")
    assert delivery(engine, user).attempts == 1


def test_a_lease_under_the_minimum_is_refused_before_anything_is_written(engine):
    user = new_user(engine)
    with pytest.raises(ValueError) as refused, engine.begin() as conn:
        ledger.claim(
            conn, DAY, {user: "<m@x>"}, token="a", run_id="r", lease=dt.timedelta(seconds=45)
        )
    assert str(refused.value) == (
        "the digest claim lease (pending_lease_minutes) must be at least 1 minute(s), got 0.75: "
        "a claim that expires while its message is being sent lets another run send it too"
    )
    assert delivery(engine, user) is None
    assert ledger.check_lease(ledger.MIN_LEASE) == ledger.MIN_LEASE


def test_unresolved_and_counts_follow_the_ledger(engine):
    day = DAY + dt.timedelta(days=400)  # a day no other test writes
    users = [new_user(engine) for _ in range(5)]
    with engine.begin() as conn:
        assert ledger.claim(conn, day, {u: f"<{u}@x>" for u in users[:4]}, token="t",
                            run_id="run-x", lease=LEASE) == set(users[:4])  # fmt: skip
        ledger.mark_sent(conn, day, users[0], "t", None)
        ledger.mark_failed(conn, day, users[1], "t", ledger.PERMANENT, "550")
        ledger.mark_failed(conn, day, users[2], "t", ledger.TRANSIENT, "421")
        ledger.record_skips(conn, day, {users[4]: ledger.OPTED_OUT})
    with engine.connect() as conn:
        assert ledger.unresolved(conn, day, users) == {users[2]: "", users[3]: "run-x"}
        counts = ledger_checks.status_counts(conn, day)
        assert counts == {ledger.SENT: 1, ledger.PENDING: 1, ledger.FAILED: 2, ledger.SKIPPED: 1}
        assert ledger_checks.stale_pending(conn, day) == 0
        assert ledger_checks.duplicate_sent(conn, day) == 0
        assert ledger_checks.ledger_is_unique_per_user_and_day(conn)
        assert ledger.pending_run_ids(conn, day) == ["run-x"]
    expire_lease(engine, users[3], dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    with engine.connect() as conn:
        assert ledger_checks.stale_pending(conn, day) == 1


# -- credits: debits at the edge, refunds once -------------------------------------------------


def balance(engine, user_id) -> int:
    with engine.connect() as conn:
        return credit_store.balance(conn, user_id)


def ledger_rows(engine, user_id) -> list:
    return rows(engine, credit_ledger, credit_ledger.c.user_id == user_id)


def test_a_debit_of_exactly_the_balance_goes_through_and_one_more_is_refused(engine):
    market, models = new_market(engine), [new_model(engine) for _ in range(3)]
    user = new_user(engine, credits=3)
    with engine.begin() as conn:
        session_id = session_store.create_session(conn, user, market, models)
    assert balance(engine, user) == 0
    with pytest.raises(credit_store.InsufficientCredits) as refused, engine.begin() as conn:
        request_store.enqueue_request(conn, market, models[0], user_id=user)
    assert (refused.value.required, refused.value.balance) == (1, 0)
    assert len(ledger_rows(engine, user)) == 2  # the grant and the session's one debit
    [debit] = [r for r in ledger_rows(engine, user) if r.reason == "debit"]
    assert (debit.delta, debit.session_id, debit.model_slug) == (-3, session_id, "*")


def test_a_debit_one_credit_over_the_balance_writes_nothing(engine):
    market, models = new_market(engine), [new_model(engine) for _ in range(3)]
    user = new_user(engine, credits=2)
    with pytest.raises(credit_store.InsufficientCredits) as refused, engine.begin() as conn:
        session_store.create_session(conn, user, market, models)
    assert (refused.value.required, refused.value.balance) == (3, 2)
    assert balance(engine, user) == 2
    assert rows(engine, prediction_sessions, prediction_sessions.c.user_id == user) == []
    with pytest.raises(credit_store.InsufficientCredits), engine.begin() as conn:
        request_store.enqueue_request(conn, market, models[0], user_id=user, credits=3)
    with engine.begin() as conn:
        request_id = request_store.enqueue_request(conn, market, models[0], user_id=user, credits=2)
    assert balance(engine, user) == 0
    [request] = rows(engine, prediction_requests, prediction_requests.c.id == request_id)
    assert (request.status, request.credits_charged) == (queue_items.QUEUED, 2)


def test_a_second_refund_of_a_request_changes_nothing(engine):
    market, model = new_market(engine), new_model(engine)
    user = new_user(engine, credits=5)
    with engine.begin() as conn:
        request_id = request_store.enqueue_request(conn, market, model, user_id=user, credits=2)
    with engine.begin() as conn:
        assert request_store.finish_request(conn, request_id, prediction_id=None, error="503")
    assert balance(engine, user) == 5
    before = (ledger_rows(engine, user), balance(engine, user))
    with engine.begin() as conn:
        assert not request_store.refund_request(conn, request_id)
        assert not request_store.finish_request(conn, request_id, prediction_id=None, error="again")
    assert (ledger_rows(engine, user), balance(engine, user)) == before
    [request] = rows(engine, prediction_requests, prediction_requests.c.id == request_id)
    assert (request.status, request.credits_refunded, request.error) == (
        queue_items.FAILED,
        2,
        "503",
    )
    [refund] = [r for r in before[0] if r.reason == "refund"]
    [debit] = [r for r in before[0] if r.reason == "debit"]
    assert (refund.delta, refund.debit_id, refund.request_id) == (2, debit.id, request_id)


def test_a_succeeded_request_is_not_refunded(engine):
    market, model = new_market(engine), new_model(engine)
    user = new_user(engine, credits=1)
    with engine.begin() as conn:
        request_id = request_store.enqueue_request(conn, market, model, user_id=user)
        assert request_store.finish_request(conn, request_id, prediction_id=None, error=None)
    assert balance(engine, user) == 0
    [request] = rows(engine, prediction_requests, prediction_requests.c.id == request_id)
    assert (request.status, request.credits_refunded) == (queue_items.SUCCEEDED, 0)


def test_a_second_refund_of_a_session_model_changes_nothing(engine):
    market, models = new_market(engine), [new_model(engine) for _ in range(3)]
    user = new_user(engine, credits=6)
    with engine.begin() as conn:
        session_id = session_store.create_session(conn, user, market, models, credits_per_model=2)
        session_store.set_model_progress(conn, session_id, models[0], status=queue_items.SUCCEEDED)
        session_store.set_model_progress(
            conn, session_id, models[1], status=queue_items.FAILED, error="x"
        )
    with engine.begin() as conn:
        assert session_store.refund_model(conn, session_id, models[1])
    before = (ledger_rows(engine, user), balance(engine, user))
    assert before[1] == 2
    with engine.begin() as conn:
        assert not session_store.refund_model(conn, session_id, models[1])
    assert (ledger_rows(engine, user), balance(engine, user)) == before
    with engine.begin() as conn:  # settling refunds the model left unfinished, once
        assert session_store.finish_session(conn, session_id) == queue_items.PARTIAL
        assert session_store.finish_session(conn, session_id) == queue_items.PARTIAL
        assert session_store.fail_session(conn, session_id, "late") == queue_items.PARTIAL
        assert not session_store.set_model_progress(
            conn, session_id, models[2], status=queue_items.SUCCEEDED
        )
    assert balance(engine, user) == 4
    [session] = rows(engine, prediction_sessions, prediction_sessions.c.id == session_id)
    assert (session.credits_refunded, session.error) == (4, None)
    refunds = [r for r in ledger_rows(engine, user) if r.reason == "refund"]
    assert sorted((r.model_slug, r.delta) for r in refunds) == [(models[1], 2), (models[2], 2)]


def test_a_session_is_notified_once_unless_the_send_is_released(engine):
    market, model = new_market(engine), new_model(engine)
    user = new_user(engine, credits=1)
    with engine.begin() as conn:
        session_id = session_store.create_session(conn, user, market, [model])
        assert session_store.mark_notified(conn, session_id)
    with engine.begin() as conn:  # a second launch of the notified session
        assert not session_store.mark_notified(conn, session_id)
        session_store.release_notification(conn, session_id)  # the send failed: the retry sends
        assert session_store.mark_notified(conn, session_id)
        assert not session_store.mark_notified(conn, session_id)


def test_requeue_and_start_leave_finished_work_alone(engine):
    market, model = new_market(engine), new_model(engine)
    user = new_user(engine, credits=2)
    with engine.begin() as conn:
        done = request_store.enqueue_request(conn, market, model, user_id=user)
        request_store.finish_request(conn, done, prediction_id=None, error=None)
        waiting = request_store.enqueue_request(conn, market, model, user_id=user)
    with engine.begin() as conn:
        assert not queue_recovery.requeue(conn, "request", done)
        assert queue_recovery.requeue(conn, "request", waiting)
    [row] = rows(engine, prediction_requests, prediction_requests.c.id == waiting)
    assert (row.status, row.launches) == (queue_items.QUEUED, 1)
