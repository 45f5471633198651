"""The life of an on-demand request and session in the store, on SQLite and PostgreSQL, as
its user sees it: the status and step of the item, and the event log the API streams
(queued, running, step, model, succeeded/failed, settled), each change touching only the
item it names.

(The credit and exactly-once guards are in test_store_guards.py and test_credits.py.)
"""

from __future__ import annotations

import pytest

from prediction_pipeline.store import events
from prediction_pipeline.store import on_demand as request_store
from prediction_pipeline.store import on_demand as session_store
from prediction_pipeline_tests.guard_world import (
    database_engine,
    new_market,
    new_model,
    new_user,
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
