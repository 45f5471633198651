"""The on-demand store's rules one by one, on SQLite and PostgreSQL: credits (balances, grants,
debits, refunds naming their own debit), idempotency keys per user and per parameter, enabled
models, the queue's order and page size, what a finish, a settle, a progress update or a
notification writes (and to which row only), and run-failure alerts.

Each test makes its own users, markets, models, requests and sessions (guard_world), so the
module shares one migrated database per engine."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from prediction_pipeline.store import alerts as alert_store
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import events, queue_items, queue_recovery
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import requests as request_store
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store.tables import (
    credit_ledger,
    prediction_requests,
    prediction_sessions,
    run_failure_alerts,
    session_models,
)
from prediction_pipeline_tests.guard_world import (
    context,
    database_engine,
    new_market,
    new_model,
    new_user,
    result,
    unique,
)

LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


def utc(value: dt.datetime) -> dt.datetime:
    """SQLite gives back naive datetimes (stored in UTC), PostgreSQL aware ones."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def ledger_rows(engine, *where) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(credit_ledger).where(*where).order_by(credit_ledger.c.id)
        ).all()


def request(engine, user: int, market: int, model: str, **kwargs) -> str:
    with engine.begin() as conn:
        return request_store.enqueue_request(conn, market, model, user_id=user, **kwargs)


def session(engine, user: int, market: int, models: list[str], **kwargs) -> str:
    with engine.begin() as conn:
        return session_store.create_session(conn, user, market, models, **kwargs)


def row(engine, table, item_id: str):
    with engine.connect() as conn:
        return conn.execute(sa.select(table).where(table.c.id == item_id)).one()


def age(engine, table, *where) -> None:
    """Set `updated_at` of the rows far back, so a test sees whether a write moved it."""
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(*where).values(updated_at=LONG_AGO))


def event_log(engine, item_id: str) -> list[tuple[str, dict]]:
    with engine.connect() as conn:
        return [(e.event, e.data) for e in events.events_after(conn, item_id)]


# -- credits ---------------------------------------------------------------------------------


def test_clocks_are_utc():
    assert queue_items.utc_now().tzinfo is dt.UTC
    assert alert_store._now().tzinfo is dt.UTC


def test_a_user_without_ledger_rows_has_nothing_to_spend(engine):
    user = new_user(engine)
    with engine.begin() as conn:
        assert credit_store.balance(conn, user) == 0
        with pytest.raises(credit_store.InsufficientCredits) as refused:
            credit_store.debit(conn, user, 1)
    assert str(refused.value) == "this costs 1 credit; the balance is 0"
    assert ledger_rows(engine, credit_ledger.c.user_id == user) == []


def test_the_refusal_says_credits_in_the_plural(engine):
    user = new_user(engine, credits=1)
    with engine.begin() as conn, pytest.raises(credit_store.InsufficientCredits) as refused:
        credit_store.debit(conn, user, 2)
    assert str(refused.value) == "this costs 2 credits; the balance is 1"
    assert (refused.value.required, refused.value.balance) == (2, 1)


def test_a_grant_returns_the_balance_and_keeps_its_note_and_key(engine):
    user = new_user(engine, credits=3)
    key = unique("grant-key")
    with engine.begin() as conn:
        assert credit_store.grant_credits(conn, user, 4, "welcome", idempotency_key=key) == 7
        # The same key again grants nothing.
        assert credit_store.grant_credits(conn, user, 4, "again", idempotency_key=key) == 7
    *_, grant = ledger_rows(engine, credit_ledger.c.user_id == user)
    assert (grant.delta, grant.reason, grant.note, grant.idempotency_key) == (
        4,
        "grant",
        "welcome",
        key,
    )


def test_a_grant_key_is_checked(engine):
    user = new_user(engine)
    with engine.begin() as conn, pytest.raises(ValueError, match="idempotency key"):
        credit_store.grant_credits(conn, user, 1, idempotency_key=" ")
    assert ledger_rows(engine, credit_ledger.c.user_id == user) == []


def test_locking_an_unknown_user_names_the_id(engine):
    with engine.begin() as conn, pytest.raises(LookupError) as missing:
        credit_store.lock_user(conn, 987654321)
    assert str(missing.value) == "no user with id 987654321"


def test_debit_row_skips_grants_and_refunds(engine):
    user = new_user(engine, credits=5)
    market, model = new_market(engine), new_model(engine)
    request_id = request(engine, user, market, model)
    with engine.begin() as conn:
        found = credit_store.debit_row(conn, credit_ledger.c.user_id == user)
    assert (found.reason, found.delta, found.request_id) == ("debit", -1, request_id)
    assert found.model_slug is None  # "*" marks a session's debit only


def test_a_refund_of_nothing_writes_nothing(engine):
    user = new_user(engine, credits=5)
    request_id = request(engine, user, new_market(engine), new_model(engine))
    with engine.begin() as conn:
        debit = credit_store.debit_row(conn, credit_ledger.c.request_id == request_id)
        assert credit_store.refund(conn, debit, 0, request_id=request_id) is False
    assert [r.reason for r in ledger_rows(engine, credit_ledger.c.user_id == user)] == [
        "grant",
        "debit",
    ]


# -- idempotency keys and models ----------------------------------------------------------------


def test_an_idempotency_key_belongs_to_its_user(engine):
    market, model, key = new_market(engine), new_model(engine), unique("key")
    alice, bob = new_user(engine, credits=2), new_user(engine, credits=2)
    first = request(engine, alice, market, model, idempotency_key=key)
    other = request(engine, bob, market, model, idempotency_key=key)
    assert first != other
    assert row(engine, prediction_requests, other).user_id == bob
    with engine.connect() as conn:
        assert credit_store.balance(conn, bob) == 1


def test_another_key_of_the_same_user_is_another_request(engine):
    user, market, model = new_user(engine, credits=2), new_market(engine), new_model(engine)
    first = request(engine, user, market, model, idempotency_key=unique("key"))
    second = request(engine, user, market, model, idempotency_key=unique("key"))
    assert first != second
    with engine.connect() as conn:
        assert credit_store.balance(conn, user) == 0


@pytest.mark.parametrize("change", ["market", "model", "web_search"])
def test_a_request_key_reused_with_another_parameter_is_a_conflict(engine, change):
    user, market, model = new_user(engine, credits=3), new_market(engine), new_model(engine)
    key = unique("key")
    request(engine, user, market, model, idempotency_key=key)
    other = {
        "market": (new_market(engine), model, False),
        "model": (market, new_model(engine), False),
        "web_search": (market, model, True),
    }[change]
    with pytest.raises(queue_items.IdempotencyConflict) as conflict:
        request(engine, user, other[0], other[1], web_search=other[2], idempotency_key=key)
    assert str(conflict.value) == f"idempotency key {key!r} was already used for another request"
    with engine.connect() as conn:
        assert credit_store.balance(conn, user) == 2


@pytest.mark.parametrize("change", ["market", "models", "web_search"])
def test_a_session_key_reused_with_another_parameter_is_a_conflict(engine, change):
    user, market, model = new_user(engine, credits=3), new_market(engine), new_model(engine)
    key = unique("key")
    session(engine, user, market, [model], idempotency_key=key)
    other = {
        "market": (new_market(engine), [model], False),
        "models": (market, [new_model(engine)], False),
        "web_search": (market, [model], True),
    }[change]
    with pytest.raises(queue_items.IdempotencyConflict) as conflict:
        session(engine, user, other[0], other[1], web_search=other[2], idempotency_key=key)
    assert str(conflict.value) == f"idempotency key {key!r} was already used for another session"


def test_a_disabled_model_is_refused_and_charges_nothing(engine):
    user, market, model = new_user(engine, credits=3), new_market(engine), new_model(engine)
    with engine.begin() as conn:
        model_store.update_model(conn, model, enabled=False)
    with pytest.raises(queue_items.UnknownModel) as refused:
        request(engine, user, market, model)
    assert str(refused.value) == f"not registered or disabled: {model}"
    with pytest.raises(queue_items.UnknownModel):
        session(engine, user, market, [new_model(engine), model])
    with engine.connect() as conn:
        assert credit_store.balance(conn, user) == 3


@pytest.mark.parametrize("slug", ["", "   ", 5, None])
def test_a_request_needs_a_model_slug(engine, slug):
    user, market = new_user(engine, credits=1), new_market(engine)
    with pytest.raises(ValueError) as refused:
        request(engine, user, market, slug)
    assert str(refused.value) == f"model must be a model slug, got {slug!r}"


def test_web_search_is_off_unless_asked_and_kept_when_asked(engine):
    user, market, model = new_user(engine, credits=4), new_market(engine), new_model(engine)
    plain, searched = (
        request(engine, user, market, model),
        request(engine, user, market, model, web_search=True),
    )
    assert row(engine, prediction_requests, plain).web_search is False
    assert row(engine, prediction_requests, searched).web_search is True
    plain, searched = (
        session(engine, user, market, [model]),
        session(engine, user, market, [model], web_search=True),
    )
    assert row(engine, prediction_sessions, plain).web_search is False
    assert row(engine, prediction_sessions, searched).web_search is True


# -- the queue -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["request", "session"])
def test_the_queue_is_oldest_first_and_a_page_is_100(engine, kind):
    table = prediction_requests if kind == "request" else prediction_sessions
    read = request_store.queued_requests if kind == "request" else session_store.queued_sessions
    user, market, model = new_user(engine, credits=200), new_market(engine), new_model(engine)
    ids = [
        request(engine, user, market, model)
        if kind == "request"
        else session(engine, user, market, [model])
        for _ in range(101)
    ]
    base = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)  # older than anything else in the queue
    with engine.begin() as conn:
        for n, item_id in enumerate(ids):
            # The first one created is made the newest: the order is by created_at, not by
            # insertion.
            created = base + dt.timedelta(seconds=(n - 1) % len(ids))
            conn.execute(sa.update(table).where(table.c.id == item_id).values(created_at=created))
        page = read(conn)
    assert [r.id for r in page] == ids[1:]  # 100 of them: the first one created is 101st


def test_starting_a_queued_request_stamps_it_and_a_finished_one_is_not_restarted(engine):
    user, market, model = new_user(engine, credits=2), new_market(engine), new_model(engine)
    request_id = request(engine, user, market, model)
    age(engine, prediction_requests, prediction_requests.c.id == request_id)
    with engine.begin() as conn:
        assert queue_items.mark_running(conn, prediction_requests, request_id, "run-1") is True
    started = row(engine, prediction_requests, request_id)
    assert (started.status, started.run_id) == ("running", "run-1")
    assert utc(started.updated_at) == utc(started.started_at) > LONG_AGO
    with engine.begin() as conn:
        request_store.finish_request(conn, request_id, prediction_id=None, error="boom")
        assert queue_items.mark_running(conn, prediction_requests, request_id, "run-2") is False
    assert row(engine, prediction_requests, request_id).run_id == "run-1"


def test_a_requeued_request_is_stamped_for_the_next_recovery(engine):
    # Recovery judges staleness by updated_at: a requeue must move it.
    user, market, model = new_user(engine, credits=1), new_market(engine), new_model(engine)
    request_id = request(engine, user, market, model)
    age(engine, prediction_requests, prediction_requests.c.id == request_id)
    with engine.begin() as conn:
        assert queue_recovery.requeue(conn, "request", request_id) is True
    requeued = row(engine, prediction_requests, request_id)
    assert (requeued.status, requeued.launches) == ("queued", 1)
    assert utc(requeued.updated_at) > LONG_AGO


# -- finishing requests ------------------------------------------------------------------------


def test_a_succeeded_request_keeps_its_prediction_id_and_says_so(engine):
    user, market, model = new_user(engine, credits=1), new_market(engine), new_model(engine)
    request_id = request(engine, user, market, model)
    age(engine, prediction_requests, prediction_requests.c.id == request_id)
    with engine.begin() as conn:
        prediction_id = prediction_store.store_prediction(
            conn, context(market), model, result(), origin="request", request_id=request_id
        )
        assert request_store.finish_request(
            conn, request_id, prediction_id=prediction_id, error=None
        )
    done = row(engine, prediction_requests, request_id)
    assert (done.status, done.prediction_id, done.error) == ("succeeded", prediction_id, None)
    assert utc(done.updated_at) == utc(done.finished_at) > LONG_AGO
    assert event_log(engine, request_id)[-1] == (
        "succeeded",
        {"prediction_id": prediction_id, "error": None},
    )


def test_a_refund_names_its_own_requests_debit(engine):
    user, market, model = new_user(engine, credits=3), new_market(engine), new_model(engine)
    first, second = request(engine, user, market, model), request(engine, user, market, model)
    with engine.begin() as conn:
        assert request_store.refund_request(conn, second) is True
        assert request_store.refund_request(conn, second) is False
    [debit] = ledger_rows(engine, credit_ledger.c.request_id == second, credit_ledger.c.delta < 0)
    [refund] = ledger_rows(engine, credit_ledger.c.request_id == second, credit_ledger.c.delta > 0)
    assert (refund.debit_id, refund.delta, refund.reason) == (debit.id, 1, "refund")
    assert row(engine, prediction_requests, second).credits_refunded == 1
    assert row(engine, prediction_requests, first).credits_refunded == 0


def test_a_request_without_a_debit_is_not_refunded(engine):
    # Requests queued before credits were charged have no debit row: nothing to give back.
    user, market, model = new_user(engine), new_market(engine), new_model(engine)
    request_id = unique("old-request")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(prediction_requests).values(
                id=request_id, market_id=market, model_slug=model, user_id=user,
                status="running", created_at=now, updated_at=now,
            )
        )  # fmt: skip
        assert request_store.refund_request(conn, request_id) is False
    assert ledger_rows(engine, credit_ledger.c.user_id == user) == []


# -- sessions ----------------------------------------------------------------------------------


def test_progress_is_in_the_sessions_model_order(engine):
    user, market = new_user(engine, credits=3), new_market(engine)
    first, second = new_model(engine), new_model(engine)
    session_id = session(engine, user, market, [first, second])
    with engine.begin() as conn:
        # Swap the positions: the order follows `position`, not the order of insertion.
        for slug, position in ((first, 1), (second, 0)):
            conn.execute(
                sa.update(session_models)
                .where(
                    session_models.c.session_id == session_id, session_models.c.model_slug == slug
                )
                .values(position=position)
            )
        assert list(session_store.session_progress(conn, session_id)) == [second, first]


def test_a_progress_update_touches_its_own_session_only(engine):
    user, market, model = new_user(engine, credits=2), new_market(engine), new_model(engine)
    mine, other = session(engine, user, market, [model]), session(engine, user, market, [model])
    age(engine, prediction_sessions, prediction_sessions.c.id.in_([mine, other]))
    age(engine, session_models, session_models.c.session_id.in_([mine, other]))
    with engine.begin() as conn:
        assert session_store.set_model_progress(conn, mine, model, status="running")
    assert utc(row(engine, prediction_sessions, mine).updated_at) > LONG_AGO
    assert utc(row(engine, prediction_sessions, other).updated_at) == LONG_AGO
    with engine.connect() as conn:
        rows = {
            r.session_id: r
            for r in conn.execute(
                sa.select(session_models).where(session_models.c.session_id.in_([mine, other]))
            )
        }
    assert (rows[mine].status, rows[other].status) == ("running", "queued")
    assert utc(rows[mine].updated_at) > LONG_AGO
    assert utc(rows[other].updated_at) == LONG_AGO


def test_settling_fails_and_refunds_this_sessions_unfinished_models_only(engine):
    user, market = new_user(engine, credits=10), new_market(engine)
    done, failed, unfinished = new_model(engine), new_model(engine), new_model(engine)
    mine = session(engine, user, market, [done, failed, unfinished], credits_per_model=2)
    other = session(engine, user, market, [unfinished])  # the same model in another session
    with engine.begin() as conn:
        session_store.set_model_progress(conn, mine, done, status="succeeded", probability=0.6)
        session_store.set_model_progress(conn, mine, failed, status="failed", error="boom")
    age(engine, session_models, session_models.c.session_id.in_([mine, other]))
    age(engine, prediction_sessions, prediction_sessions.c.id == mine)
    with engine.begin() as conn:
        assert session_store.finish_session(conn, mine) == "partial"
        progress = session_store.session_progress(conn, mine)
        assert session_store.session_progress(conn, other) == {unfinished: {"status": "queued"}}
    assert progress == {
        done: {"status": "succeeded", "probability": 0.6},
        failed: {"status": "failed", "error": "boom"},
        unfinished: {"status": "failed"},
    }
    settled = row(engine, prediction_sessions, mine)
    assert (settled.status, settled.current_step, settled.credits_refunded) == (
        "partial",
        "notifying",
        4,
    )
    assert utc(settled.updated_at) == utc(settled.finished_at) > LONG_AGO
    with engine.connect() as conn:
        stamped = dict(
            conn.execute(
                sa.select(session_models.c.model_slug, session_models.c.updated_at).where(
                    session_models.c.session_id == mine
                )
            ).all()
        )
    assert utc(stamped[unfinished]) > LONG_AGO and utc(stamped[failed]) == LONG_AGO
    log = event_log(engine, mine)
    # Only the model that had not finished gets the settle's own failure event.
    assert [
        data for event, data in log if data.get("error") == "not finished when the session settled"
    ] == [
        {"model": unfinished, "status": "failed", "error": "not finished when the session settled"}
    ]
    assert log[-1] == ("settled", {"status": "partial", "credits_refunded": 4})
    assert row(engine, prediction_sessions, other).status == "queued"


def test_a_model_finishing_while_its_session_settles_waits_and_is_refused(engine, monkeypatch):
    # No lost update: the settle reads the progress with the session row locked, so a model
    # reporting success in between waits for the settle and is then refused; the refund of
    # the model the settle saw unfinished stands alone.
    user, market, model = new_user(engine, credits=1), new_market(engine), new_model(engine)
    session_id = session(engine, user, market, [model])
    seen: dict = {}

    def report_success() -> None:
        with engine.begin() as conn:
            seen["recorded"] = session_store.set_model_progress(
                conn, session_id, model, status="succeeded", probability=0.7
            )

    read_progress = session_store.session_progress

    def progress_then_a_racing_model(conn, item_id):
        progress = read_progress(conn, item_id)
        seen["racer"] = threading.Thread(target=report_success)
        seen["racer"].start()
        seen["racer"].join(timeout=1.0)  # it should be waiting for our lock
        seen["waited"] = seen["racer"].is_alive()
        return progress

    monkeypatch.setattr(session_store, "session_progress", progress_then_a_racing_model)
    with engine.begin() as conn:
        assert session_store.finish_session(conn, session_id) == "failed"
    monkeypatch.undo()
    seen.pop("racer").join(30)
    assert seen == {"waited": True, "recorded": False}
    with engine.connect() as conn:
        assert session_store.session_progress(conn, session_id) == {model: {"status": "failed"}}
        assert credit_store.balance(conn, user) == 1


def test_refunds_name_this_sessions_debit_and_only_its_models(engine):
    user, market, model = new_user(engine, credits=10), new_market(engine), new_model(engine)
    first = session(engine, user, market, [model])
    second = session(engine, user, market, [model], credits_per_model=3)
    with engine.begin() as conn:
        assert session_store.refund_model(conn, second, "not/in-session") is False
        assert session_store.refund_model(conn, second, model) is True
        assert session_store.refund_model(conn, second, model) is False
    [debit] = ledger_rows(engine, credit_ledger.c.session_id == second, credit_ledger.c.delta < 0)
    [refund] = ledger_rows(engine, credit_ledger.c.session_id == second, credit_ledger.c.delta > 0)
    assert (refund.debit_id, refund.delta, refund.model_slug) == (debit.id, 3, model)
    assert row(engine, prediction_sessions, second).credits_refunded == 3
    assert row(engine, prediction_sessions, first).credits_refunded == 0


def test_notify_and_release_stamp_the_session(engine):
    user, market, model = new_user(engine, credits=1), new_market(engine), new_model(engine)
    session_id = session(engine, user, market, [model])
    age(engine, prediction_sessions, prediction_sessions.c.id == session_id)
    with engine.begin() as conn:
        assert session_store.mark_notified(conn, session_id) is True
    notified = row(engine, prediction_sessions, session_id)
    assert notified.current_step == "done" and utc(notified.updated_at) > LONG_AGO
    age(engine, prediction_sessions, prediction_sessions.c.id == session_id)
    with engine.begin() as conn:
        session_store.release_notification(conn, session_id)
    released = row(engine, prediction_sessions, session_id)
    assert (released.notified_at, released.current_step) == (None, "notifying")
    assert utc(released.updated_at) > LONG_AGO


# -- run-failure alerts ----------------------------------------------------------------------


def alert(engine, **kwargs) -> int:
    values = {
        "run_id": unique("run"),
        "job_name": "on_demand_request_job",
        "partition_key": None,
        "error": "boom",
        "run_url": "http://localhost:3000/runs/x",
        "notified_via": "log",
    }
    with engine.begin() as conn:
        return alert_store.record_alert(conn, **{**values, **kwargs})


def test_an_alert_without_a_webhook_is_delivered_at_once(engine):
    alert_id = alert(engine)
    with engine.connect() as conn:
        recorded = conn.execute(
            sa.select(run_failure_alerts).where(run_failure_alerts.c.id == alert_id)
        ).one()
    assert recorded.delivered_at is not None


def test_claiming_one_alert_leaves_the_others_claimable(engine):
    first, second = alert(engine, deliver=True), alert(engine, deliver=True)
    with engine.begin() as conn:
        assert alert_store.claim_alert_delivery(conn, first, seen_attempts=0) is True
        assert alert_store.claim_alert_delivery(conn, first, seen_attempts=0) is False
        assert alert_store.claim_alert_delivery(conn, second, seen_attempts=0) is True


def test_alert_pages_are_50_oldest_first_to_deliver_and_newest_first_to_list(engine):
    ids = [alert(engine, deliver=True) for _ in range(51)]
    with engine.connect() as conn:
        undelivered = [a.id for a in alert_store.undelivered_alerts(conn, max_attempts=1000)]
        listed = [a.id for a in alert_store.alerts(conn)]
        assert [a.id for a in alert_store.undelivered_alerts(conn, max_attempts=1000, limit=3)] == (
            undelivered[:3]
        )
    assert len(undelivered) == 50 and undelivered == sorted(undelivered)
    assert listed == sorted(ids, reverse=True)[:50]
