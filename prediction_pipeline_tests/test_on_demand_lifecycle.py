"""The life of an on-demand request and session in the store, on SQLite and PostgreSQL, as
its user sees it: the status and step of the item, and the event log the API streams
(queued, running, step, model, succeeded/failed, settled), each change touching only the
item it names.

(The credit and exactly-once guards are in test_store_guards.py and test_credits.py.)
"""

from __future__ import annotations

import pytest

# One module today; named by the modules its parts are moving to (queue_items, credits,
# requests, sessions, queue_recovery, alerts), so the split only changes these lines.
from prediction_pipeline.store import alerts as alert_store
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import events
from prediction_pipeline.store import queue_items as queue_store
from prediction_pipeline.store import queue_recovery as recovery_store
from prediction_pipeline.store import requests as request_store
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline_tests.guard_world import (
    database_engine,
    new_market,
    new_model,
    new_user,
    unique,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    yield from database_engine(request.param, tmp_path_factory)


def log(conn, item_id: str) -> list[tuple[str, str, dict]]:
    return [(e.kind, e.event, e.data) for e in events.events_after(conn, item_id)]


def two_requests(engine) -> tuple[str, str, str, int]:
    model, market, user = new_model(engine), new_market(engine), new_user(engine, credits=10)
    with engine.begin() as conn:
        first = request_store.enqueue_request(conn, market, model, user_id=user, credits=2)
        second = request_store.enqueue_request(conn, market, model, user_id=user, credits=2)
    return first, second, model, market


def two_sessions(engine, models: list[str]) -> tuple[str, str, int]:
    market, user = new_market(engine), new_user(engine, credits=50)
    with engine.begin() as conn:
        first = session_store.create_session(conn, user, market, models, credits_per_model=2)
        second = session_store.create_session(conn, user, market, models, credits_per_model=2)
    return first, second, market


# -- requests ------------------------------------------------------------------------------


def test_a_request_runs_and_succeeds_once_and_its_events_say_so(engine):
    first, second, model, market = two_requests(engine)
    with engine.begin() as conn:
        running = request_store.start_request(conn, first, "run-1")
        assert (running.status, running.run_id) == ("running", "run-1")
        assert running.started_at is not None
        assert request_store.get_request(conn, second).status == "queued"  # only `first`
        assert request_store.finish_request(conn, first, prediction_id=None, error=None)
        assert not request_store.finish_request(conn, first, prediction_id=None, error="late")
        # A finished request is never started again (a late re-launch of its run).
        done = request_store.start_request(conn, first, "run-2")
        assert (done.status, done.run_id, done.error) == ("succeeded", "run-1", None)
        assert done.finished_at is not None and done.credits_refunded == 0
        assert log(conn, first) == [
            ("request", "queued", {"model": model, "market_id": market}),
            ("request", "running", {"run_id": "run-1"}),
            ("request", "succeeded", {"prediction_id": None, "error": None}),
        ]
        assert log(conn, second) == [
            ("request", "queued", {"model": model, "market_id": market}),
        ]


def test_a_failed_request_is_refunded_and_its_event_carries_the_error(engine):
    first, second, _, _ = two_requests(engine)
    with engine.begin() as conn:
        request_store.start_request(conn, first, "run-1")
        assert request_store.finish_request(conn, first, prediction_id=None, error="no answer")
        row = request_store.get_request(conn, first)
        assert (row.status, row.error, row.credits_refunded) == ("failed", "no answer", 2)
        assert log(conn, first)[-1] == (
            "request",
            "failed",
            {"prediction_id": None, "error": "no answer"},
        )
        assert request_store.get_request(conn, second).credits_refunded == 0


def test_a_relaunch_takes_over_a_running_request(engine):
    first, _, _, _ = two_requests(engine)
    with engine.begin() as conn:
        request_store.start_request(conn, first, "run-1")
        taken = request_store.start_request(conn, first, "run-2")
        assert (taken.status, taken.run_id) == ("running", "run-2")
        assert [e for _, e, _ in log(conn, first)] == ["queued", "running", "running"]


def test_queued_requests_are_the_queued_ones_oldest_first(engine):
    with engine.begin() as conn:  # drain what other tests left queued
        for row in request_store.queued_requests(conn, limit=10_000):
            request_store.start_request(conn, row.id, "drain")
    first, second = two_requests(engine)[:2]
    third, fourth = two_requests(engine)[:2]
    with engine.begin() as conn:
        request_store.start_request(conn, second, "run-1")
        assert [r.id for r in request_store.queued_requests(conn)] == [first, third, fourth]
        assert [r.id for r in request_store.queued_requests(conn, limit=1)] == [first]


# -- sessions ------------------------------------------------------------------------------


def test_a_session_goes_through_its_steps_and_settles_partial(engine):
    done, pending = new_model(engine), new_model(engine)
    first, second, market = two_sessions(engine, [done, pending])
    with engine.begin() as conn:
        running = session_store.start_session(conn, first, "run-1")
        assert (running.status, running.run_id) == ("running", "run-1")
        assert running.started_at is not None
        assert session_store.get_session(conn, second).status == "queued"
        session_store.set_session_step(conn, first, "research", research="notes")
        session_store.set_session_step(conn, first, "forecasting")
        row = session_store.get_session(conn, first)
        assert (row.current_step, row.research) == ("forecasting", "notes")
        assert session_store.set_model_progress(conn, first, done, status="running")
        assert session_store.set_model_progress(
            conn, first, done, status="succeeded", probability=0.6
        )
        assert session_store.set_model_progress(conn, first, pending, error="retrying")
        assert not session_store.set_model_progress(conn, first, "acme/absent", status="failed")
        with pytest.raises(ValueError, match="unknown progress fields: \\['colour'\\]"):
            session_store.set_model_progress(conn, first, done, colour="red")

        assert session_store.finish_session(conn, first) == "partial"
        settled = session_store.get_session(conn, first)
        assert (settled.status, settled.current_step, settled.credits_refunded) == (
            "partial",
            "notifying",
            2,
        )
        assert settled.finished_at is not None
        assert settled.progress == {
            done: {"status": "succeeded", "probability": 0.6},
            pending: {"status": "failed", "error": "retrying"},
        }
        # Settled: progress is left as it is, a second settle changes nothing.
        assert not session_store.set_model_progress(conn, first, pending, status="succeeded")
        assert session_store.finish_session(conn, first) == "partial"
        assert log(conn, first) == [
            ("session", "queued", {"models": [done, pending], "market_id": market}),
            ("session", "running", {"run_id": "run-1"}),
            ("session", "step", {"step": "research"}),
            ("session", "step", {"step": "forecasting"}),
            ("session", "model", {"model": done, "status": "running"}),
            ("session", "model", {"model": done, "status": "succeeded", "probability": 0.6}),
            (
                "session",
                "model",
                {
                    "model": pending,
                    "status": "failed",
                    "error": "not finished when the session settled",
                },
            ),
            ("session", "settled", {"status": "partial", "credits_refunded": 2}),
        ]
        untouched = session_store.get_session(conn, second)
        assert (untouched.status, untouched.current_step, untouched.research) == (
            "queued",
            "queued",
            None,
        )
        assert [e for _, e, _ in log(conn, second)] == ["queued"]


@pytest.mark.parametrize(
    ("outcomes", "status", "refunded"),
    [
        (["succeeded", "succeeded"], "completed", 0),
        (["failed", "failed"], "failed", 4),
        (["succeeded", "failed"], "partial", 2),
    ],
)
def test_a_session_settles_by_how_many_models_succeeded(engine, outcomes, status, refunded):
    models = [new_model(engine), new_model(engine)]
    session, _, _ = two_sessions(engine, models)
    with engine.begin() as conn:
        session_store.start_session(conn, session, "run-1")
        for model, outcome in zip(models, outcomes, strict=True):
            session_store.set_model_progress(conn, session, model, status=outcome)
        assert session_store.finish_session(conn, session) == status
        assert session_store.get_session(conn, session).credits_refunded == refunded


def test_a_failed_session_keeps_a_short_error_and_settles(engine):
    model = new_model(engine)
    session, other, _ = two_sessions(engine, [model])
    with engine.begin() as conn:
        session_store.start_session(conn, session, "run-1")
        assert session_store.fail_session(conn, session, "x" * 3000) == "failed"
        row = session_store.get_session(conn, session)
        assert (row.status, row.error, row.credits_refunded) == ("failed", "x" * 2000, 2)
        # A settled session is left alone by a later failure.
        assert session_store.fail_session(conn, session, "late") == "failed"
        assert session_store.get_session(conn, session).error == "x" * 2000
        assert session_store.get_session(conn, other).error is None


def test_notifying_one_session_leaves_the_others_alone(engine):
    model = new_model(engine)
    first, second, _ = two_sessions(engine, [model])
    with engine.begin() as conn:
        for session in (first, second):
            session_store.start_session(conn, session, "run-1")
            session_store.finish_session(conn, session)
        assert session_store.mark_notified(conn, first)
        notified, waiting = (session_store.get_session(conn, s) for s in (first, second))
        assert (notified.current_step, waiting.current_step) == ("done", "notifying")
        assert notified.notified_at is not None and waiting.notified_at is None
        assert session_store.mark_notified(conn, second)  # its own send still goes out

        session_store.release_notification(conn, first)  # the send failed: retry it
        released, sent = (session_store.get_session(conn, s) for s in (first, second))
        assert (released.current_step, released.notified_at) == ("notifying", None)
        assert sent.current_step == "done" and sent.notified_at is not None


# -- what is refused before anything is written --------------------------------------------


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (True, "credits must be a whole number, got True"),
        (1.0, "credits must be a whole number, got 1.0"),
        (0, "credits must be from 1 to 1000000, got 0"),
        (1_000_001, "credits must be from 1 to 1000000, got 1000001"),
    ],
)
def test_a_credit_amount_is_a_whole_number_within_bounds(amount, message):
    with pytest.raises(ValueError) as refused:
        credit_store.check_credits(amount)
    assert str(refused.value) == message


def test_credit_bounds_are_inclusive():
    assert credit_store.check_credits(1) == 1
    assert credit_store.check_credits(1_000_000) == 1_000_000


@pytest.mark.parametrize("key", ["", "   ", "k" * 201, 42])
def test_an_idempotency_key_is_a_short_non_empty_string(key):
    with pytest.raises(ValueError, match="at most 200 characters"):
        queue_store.check_idempotency_key(key)


def test_an_idempotency_key_of_the_columns_width_is_kept():
    assert queue_store.check_idempotency_key("k" * 200) == "k" * 200
    assert queue_store.check_idempotency_key(None) is None


@pytest.mark.parametrize(
    ("slugs", "message"),
    [
        ("acme/a", "models must be a list of model slugs, got str 'acme/a'"),
        (None, "models must be a list of model slugs, got NoneType None"),
        (["acme/a", 3], "every model must be a slug string, got ['acme/a', 3]"),
        ([" ", ""], "a session needs at least one model"),
        ([f"acme/{i}" for i in range(21)], "a session takes at most 20 models, got 21"),
    ],
)
def test_a_sessions_models_are_a_list_of_slugs(slugs, message):
    with pytest.raises(ValueError) as refused:
        session_store.check_model_slugs(slugs)
    assert str(refused.value) == message


def test_a_sessions_models_are_stripped_and_deduplicated_in_order():
    models = [" acme/b", "acme/a", "acme/b ", ""] + [f"acme/{i}" for i in range(18)]
    assert session_store.check_model_slugs(models) == ["acme/b", "acme/a"] + [
        f"acme/{i}" for i in range(18)
    ]


def test_a_disabled_or_unknown_model_is_named_in_the_refusal(engine):
    enabled, market, user = new_model(engine), new_market(engine), new_user(engine, credits=5)
    refused = pytest.raises(LookupError, match="not registered or disabled: acme/nope, acme/gone")
    with engine.begin() as conn, refused:
        session_store.create_session(conn, user, market, [enabled, "acme/nope", "acme/gone"])


# -- run failure alerts --------------------------------------------------------------------


def alert(conn, run_id: str, *, deliver: bool = True, error: str = "boom") -> int | None:
    return alert_store.record_alert(
        conn,
        run_id=run_id,
        job_name="predictions_job",
        partition_key="2026-11-02|acme/m",
        error=error,
        run_url=f"http://dagster/runs/{run_id}",
        notified_via="webhook" if deliver else "log",
        deliver=deliver,
    )


def test_a_failed_run_is_alerted_once_and_its_webhook_sent_by_one_sensor(engine):
    run_id, quiet = unique("run"), unique("run")
    with engine.begin() as conn:
        alert_id = alert(conn, run_id, error="e" * 5000)
        assert alert(conn, run_id) is None  # the same run again: no second alert
        alert(conn, quiet, deliver=False)  # no webhook: nothing to deliver
        [row] = [r for r in alert_store.alerts(conn, limit=1000) if r.run_id == run_id]
        assert (row.id, row.job_name, row.partition_key, row.notified_via) == (
            alert_id,
            "predictions_job",
            "2026-11-02|acme/m",
            "webhook",
        )
        assert row.error == "e" * 4000 and row.delivered_at is None
        assert row.run_url == f"http://dagster/runs/{run_id}"
        waiting = {r.id for r in alert_store.undelivered_alerts(conn, max_attempts=3)}
        assert alert_id in waiting and len(waiting) == len(
            alert_store.undelivered_alerts(conn, max_attempts=3, limit=1000)
        )
        assert all(r.run_id != quiet for r in alert_store.undelivered_alerts(conn, max_attempts=3))

        # Two sensors saw it with 0 attempts: one claims the attempt, the other backs off.
        assert alert_store.claim_alert_delivery(conn, alert_id, seen_attempts=0)
        assert not alert_store.claim_alert_delivery(conn, alert_id, seen_attempts=0)
        alert_store.finish_alert_delivery(conn, alert_id, error="x" * 2000)
        [row] = [r for r in alert_store.alerts(conn, limit=1000) if r.id == alert_id]
        assert (row.attempts, row.last_error, row.delivered_at) == (1, "x" * 1000, None)
        assert row.last_attempt_at is not None
        # Attempts left: still waiting; with a bound of one attempt it is given up.
        assert alert_id in {r.id for r in alert_store.undelivered_alerts(conn, max_attempts=2)}
        assert alert_id not in {r.id for r in alert_store.undelivered_alerts(conn, max_attempts=1)}

        assert alert_store.claim_alert_delivery(conn, alert_id, seen_attempts=1)
        alert_store.finish_alert_delivery(conn, alert_id, error=None)
        [row] = [r for r in alert_store.alerts(conn, limit=1000) if r.id == alert_id]
        assert row.delivered_at is not None and row.last_error is None
        assert not alert_store.claim_alert_delivery(conn, alert_id, seen_attempts=2)
        assert alert_id not in {r.id for r in alert_store.undelivered_alerts(conn, max_attempts=9)}
        newest = alert_store.alerts(conn, limit=1)
        assert [r.run_id for r in newest] == [quiet]


# -- recovery after a dead run -------------------------------------------------------------


def test_unfinished_work_is_listed_with_its_launches_and_requeued_once_per_dead_run(engine):
    model = new_model(engine)
    done, running = two_requests(engine)[:2]
    session, queued_session, _ = two_sessions(engine, [model])
    with engine.begin() as conn:
        request_store.start_request(conn, done, "run-1")
        request_store.finish_request(conn, done, prediction_id=None, error=None)
        request_store.start_request(conn, running, "run-1")
        session_store.start_session(conn, session, "run-1")
        items = {item[1]: item for item in recovery_store.unfinished_items(conn)}
    assert done not in items
    assert [items[i][0::2] for i in (running, session, queued_session)] == [
        ("request", "running", 0),
        ("session", "running", 0),
        ("session", "queued", 0),
    ]
    assert all(items[i][3].tzinfo is not None for i in (running, session, queued_session))
    with engine.begin() as conn:
        assert recovery_store.requeue(conn, "request", running)
        assert recovery_store.requeue(conn, "session", session)
        assert not recovery_store.requeue(conn, "request", done)  # finished meanwhile
        items = {item[1]: item for item in recovery_store.unfinished_items(conn)}
        assert items[running][2:5:2] == ("queued", 1)
        assert items[session][2:5:2] == ("queued", 1)
        assert log(conn, running)[-1] == ("request", "requeued", {})
        assert log(conn, session)[-1] == ("session", "requeued", {})
        assert request_store.get_request(conn, done).status == "succeeded"


def test_queued_sessions_are_the_queued_ones_oldest_first(engine):
    model = new_model(engine)
    with engine.begin() as conn:  # drain what other tests left queued
        for row in session_store.queued_sessions(conn, limit=10_000):
            session_store.start_session(conn, row.id, "drain")
    first, second, _ = two_sessions(engine, [model])
    third = two_sessions(engine, [model])[0]
    with engine.begin() as conn:
        session_store.start_session(conn, second, "run-1")
        queued = [s.id for s in session_store.queued_sessions(conn)]
        assert queued[:2] == [first, third] and second not in queued
        assert [s.id for s in session_store.queued_sessions(conn, limit=1)] == [first]
