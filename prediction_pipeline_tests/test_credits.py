"""Credits, sessions and requests under concurrency and bad input, on SQLite and PostgreSQL.

Concurrency is proven with real processes (child_processes.CONTEXT): each opens its own
engine, waits at a barrier, then makes one call, as parallel web requests or parallel
model steps of a run would.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from prediction_pipeline.cli import main
from prediction_pipeline.services import on_demand
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import migrate, queue_items, queue_recovery
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import requests as request_store
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import (
    credit_ledger,
    markets,
    prediction_requests,
    prediction_sessions,
    users,
)
from prediction_pipeline_tests.child_processes import mark_model_done, open_item, run_together

USER = "ada@example.com"
MODELS = [f"acme/model-{i}" for i in range(6)]


@pytest.fixture
def market_id(engine) -> int:
    """One market and six registered models; no Dagster needed for the queue tables."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for slug in MODELS:
            model_store.upsert_model(conn, model_store.ModelSpec(slug, "openrouter"))
        return conn.scalar(
            sa.insert(markets)
            .values(
                source="synthetic",
                source_id="m-1",
                question="Will it rain?",
                tags=[],
                outcomes=["Yes", "No"],
                yes_price=0.4,
                status="open",
                observed_day=now.date(),
                first_seen_at=now,
                updated_at=now,
            )
            .returning(markets.c.id)
        )


def count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where))


def balance(engine, email=USER) -> int:
    with engine.connect() as conn:
        user_id = conn.scalar(sa.select(users.c.id).where(users.c.email == email))
        return credit_store.balance(conn, user_id)


# -- real processes ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["session", "request"])
def test_concurrent_debits_never_overspend(database_url, engine, market_id, kind):
    on_demand.grant(engine, USER, 1)
    outcomes = run_together(
        open_item, [(database_url, kind, market_id, [MODELS[0]], USER, None)] * 8
    )
    assert [o for o in outcomes if o[0] == "error"] == []
    assert sorted(o[0] for o in outcomes) == ["insufficient"] * 7 + ["ok"]
    table = prediction_sessions if kind == "session" else prediction_requests
    assert count(engine, table) == 1
    assert balance(engine) == 0
    assert count(engine, credit_ledger, credit_ledger.c.reason == "debit") == 1


def test_parallel_model_steps_are_all_recorded_and_settle_refunds_none(
    database_url, engine, market_id
):
    on_demand.grant(engine, USER, 6)
    session_id = on_demand.create_session(engine, market_id, MODELS, USER)
    outcomes = run_together(mark_model_done, [(database_url, session_id, m) for m in MODELS])
    assert sorted(outcomes) == sorted(("ok", m) for m in MODELS)

    info = on_demand.status(engine, session_id)
    assert {m: p["status"] for m, p in info["progress"].items()} == dict.fromkeys(
        MODELS, "succeeded"
    )
    assert on_demand.settle_session(engine, session_id) == "completed"
    info = on_demand.status(engine, session_id)
    assert info["credits_refunded"] == 0 and info["balance"] == 0
    assert count(engine, credit_ledger, credit_ledger.c.reason == "refund") == 0


def test_same_idempotency_key_concurrently_gives_one_session_and_one_debit(
    database_url, engine, market_id
):
    on_demand.grant(engine, USER, 5)
    outcomes = run_together(
        open_item, [(database_url, "session", market_id, MODELS[:2], USER, "click-1")] * 4
    )
    assert {o[0] for o in outcomes} == {"ok"}, outcomes
    [session_id] = {o[1] for o in outcomes}
    # A later retry of the same POST: the same answer, nothing new.
    again = on_demand.create_session(engine, market_id, MODELS[:2], USER, idempotency_key="click-1")
    assert again == session_id
    assert count(engine, prediction_sessions) == 1
    assert count(engine, credit_ledger, credit_ledger.c.reason == "debit") == 1
    assert balance(engine) == 3
    # The same key for something else is a mistake, not a replay.
    with pytest.raises(queue_items.IdempotencyConflict, match="already used for another session"):
        on_demand.create_session(engine, market_id, MODELS[:3], USER, idempotency_key="click-1")
    # Another key is another session.
    other = on_demand.create_session(engine, market_id, MODELS[:2], USER, idempotency_key="click-2")
    assert other != session_id and balance(engine) == 1


def test_request_idempotency_key(engine, market_id):
    on_demand.grant(engine, USER, 3)
    first = on_demand.request_prediction(
        engine, market_id, MODELS[0], user_email=USER, idempotency_key="r-1"
    )
    again = on_demand.request_prediction(
        engine, market_id, MODELS[0], user_email=USER, idempotency_key="r-1"
    )
    assert again == first and balance(engine) == 2
    assert count(engine, prediction_requests) == 1
    with pytest.raises(queue_items.IdempotencyConflict, match="another request"):
        on_demand.request_prediction(
            engine, market_id, MODELS[1], user_email=USER, idempotency_key="r-1"
        )


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("acme/model-0", "must be a list of model slugs, got str"),
        ([1, 2], "every model must be a slug string"),
        ([], "at least one model"),
        (None, "must be a list of model slugs, got NoneType"),
    ],
)
def test_bad_model_lists_are_refused_and_charge_nothing(engine, market_id, models, message):
    on_demand.grant(engine, USER, 20)
    with pytest.raises(ValueError, match=message):
        on_demand.create_session(engine, market_id, models, USER)
    assert count(engine, prediction_sessions) == 0 and balance(engine) == 20


@pytest.mark.parametrize(
    ("credits", "message"),
    [
        (1.5, "whole number, got 1.5"),
        (2**31, "from 1 to 1000000, got 2147483648"),
        (0, "from 1 to 1000000, got 0"),
        (-5, "from 1 to 1000000, got -5"),
        (True, "whole number, got True"),
        ("3", "whole number, got '3'"),
    ],
)
def test_grant_takes_bounded_whole_numbers_only(engine, credits, message):
    with pytest.raises(ValueError, match=message):
        on_demand.grant(engine, USER, credits)
    assert count(engine, users) == 0 and count(engine, credit_ledger) == 0  # nothing written


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("-5", "Error: credits must be from 1 to 1000000, got -5"),
        ("1.5", "Error: credits must be a whole number, got '1.5'"),
        ("0", "Error: credits must be from 1 to 1000000, got 0"),
    ],
)
def test_cli_grant_says_what_is_wrong_in_one_line(database_url, amount, message):
    result = CliRunner().invoke(
        main, ["--database-url", database_url, "credits", "grant", USER, amount]
    )
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [message]


def test_cli_idempotency_key_returns_the_first_id(database_url, engine, market_id):
    on_demand.grant(engine, USER, 5)
    args = ["--database-url", database_url]
    session = ["session", "create", "--market", str(market_id), "--models", MODELS[0]]
    predict = ["predict", str(market_id), MODELS[0]]
    for command in (session, predict):
        outputs = [
            CliRunner().invoke(main, [*args, *command, "--user", USER, "--idempotency-key", "k"])
            for _ in range(2)
        ]
        assert [o.exit_code for o in outputs] == [0, 0]
        assert outputs[0].output == outputs[1].output
    assert balance(engine) == 3


def test_a_request_needs_a_known_user(engine, market_id):
    with pytest.raises(ValueError, match="a user email is required"):
        on_demand.request_prediction(engine, market_id, MODELS[0], user_email="")
    with pytest.raises(LookupError, match="no user 'nobody@example.com'"):
        on_demand.request_prediction(engine, market_id, MODELS[0], user_email="nobody@example.com")
    assert count(engine, prediction_requests) == 0


def test_cli_predict_needs_a_user(database_url, market_id):
    result = CliRunner().invoke(
        main, ["--database-url", database_url, "predict", str(market_id), MODELS[0]]
    )
    assert result.exit_code != 0 and "Missing option '--user'" in result.output


# -- the ledger ----------------------------------------------------------------------------


def test_ledger_is_append_only(engine, market_id):
    on_demand.grant(engine, USER, 2)
    on_demand.create_session(engine, market_id, [MODELS[0]], USER)
    on_demand.grant(engine, "bob@example.com", 1)  # credit history and nothing else
    rows = count(engine, credit_ledger)
    for email in (USER, "bob@example.com"):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.delete(users).where(users.c.email == email))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.update(credit_ledger).values(delta=100))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.delete(credit_ledger))
    if engine.dialect.name == "postgresql":
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE credit_ledger CASCADE"))
    assert count(engine, credit_ledger) == rows and count(engine, users) == 2
    assert balance(engine) == 1 and balance(engine, "bob@example.com") == 1


def test_refund_gives_back_what_was_charged(engine, market_id, monkeypatch):
    on_demand.grant(engine, USER, 10)
    session_id = on_demand.create_session(engine, market_id, MODELS[:3], USER)
    monkeypatch.setattr(on_demand, "CREDITS_PER_MODEL", 4)  # the price changed since
    with engine.begin() as conn:
        session_store.set_model_progress(conn, session_id, MODELS[0], status=queue_items.SUCCEEDED)
        session_store.set_model_progress(
            conn, session_id, MODELS[1], status=queue_items.FAILED, error="x"
        )
    assert on_demand.settle_session(engine, session_id) == "partial"
    info = on_demand.status(engine, session_id)
    assert info["credits_charged"] == 3 and info["credits_refunded"] == 2
    assert info["balance"] == 9
    with engine.connect() as conn:
        debit = conn.execute(sa.select(credit_ledger).where(credit_ledger.c.reason == "debit"))
        [debit] = list(debit)
        refunds = list(
            conn.execute(sa.select(credit_ledger).where(credit_ledger.c.reason == "refund"))
        )
    assert sorted(r.model_slug for r in refunds) == MODELS[1:3]
    assert {(r.delta, r.debit_id) for r in refunds} == {(1, debit.id)}
    # Settling again refunds nothing more.
    assert on_demand.settle_session(engine, session_id) == "partial"
    assert balance(engine) == 9


def test_a_failed_request_is_refunded_once(engine, market_id):
    on_demand.grant(engine, USER, 1)
    request_id = on_demand.request_prediction(engine, market_id, MODELS[0], user_email=USER)
    assert balance(engine) == 0
    with pytest.raises(credit_store.InsufficientCredits, match="costs 1 credit; the balance is 0"):
        on_demand.request_prediction(engine, market_id, MODELS[0], user_email=USER)
    with engine.begin() as conn:
        assert request_store.finish_request(conn, request_id, prediction_id=None, error="gave up")
    with engine.begin() as conn:  # a second give-up (recovery racing the run) is a no-op
        assert not request_store.finish_request(conn, request_id, prediction_id=None, error="again")
    info = on_demand.status(engine, request_id)
    assert info["status"] == "failed" and info["error"] == "gave up"
    assert info["credits_charged"] == 1 and info["credits_refunded"] == 1
    assert balance(engine) == 1


# -- recovery guards -----------------------------------------------------------------------


def test_requeue_leaves_finished_work_alone(engine, market_id):
    on_demand.grant(engine, USER, 2)
    session_id = on_demand.create_session(engine, market_id, [MODELS[0]], USER)
    request_id = on_demand.request_prediction(engine, market_id, MODELS[0], user_email=USER)
    with engine.begin() as conn:
        session_store.set_model_progress(conn, session_id, MODELS[0], status=queue_items.SUCCEEDED)
        session_store.finish_session(conn, session_id)
        request_store.finish_request(conn, request_id, prediction_id=None, error=None)
    with engine.begin() as conn:  # recovery acting on what it read before they finished
        queue_recovery.requeue(conn, "session", session_id)
        queue_recovery.requeue(conn, "request", request_id)
    assert on_demand.status(engine, session_id)["status"] == "completed"
    assert on_demand.status(engine, request_id)["status"] == "succeeded"
    with engine.connect() as conn:
        launches = conn.execute(
            sa.select(prediction_sessions.c.launches).union_all(
                sa.select(prediction_requests.c.launches)
            )
        ).scalars()
        assert list(launches) == [0, 0]
    with engine.begin() as conn:  # a late give-up changes nothing either
        session_store.fail_session(conn, session_id, "gave up late")
        request_store.finish_request(conn, request_id, prediction_id=None, error="gave up late")
    assert on_demand.status(engine, session_id)["error"] is None
    assert on_demand.status(engine, request_id)["error"] is None
    assert balance(engine) == 0  # nothing refunded


# -- SQLite transactions and the migration ---------------------------------------------------


def test_sqlite_readers_are_not_blocked_by_a_writer(database_url, engine, market_id):
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite transaction modes")
    on_demand.grant(engine, USER, 1)
    other = make_engine(database_url)
    statements = []
    sa.event.listen(other, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        with engine.begin() as writer:  # holds SQLite's one write lock
            writer.execute(sa.update(markets).values(question="changed"))
            with other.connect() as reader:  # would wait out busy_timeout if it locked
                assert reader.scalar(sa.select(markets.c.question)) == "Will it rain?"
        with other.begin() as conn:
            conn.execute(sa.select(1))
    finally:
        other.dispose()
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins == ["BEGIN", "BEGIN IMMEDIATE"]


def test_migration_moves_session_progress_to_rows_and_back(empty_database_url):
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "0005")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, email, digest_opt_in, created_at, updated_at) "
                "VALUES (1, 'a@x.org', true, :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO markets (id, source, source_id, question, description, slug, tags,"
                " volume, liquidity, outcomes, status, observed_day, first_seen_at, updated_at)"
                " VALUES (1, 's', 'm', 'q', '', '', '[]', 0, 0, '[]', 'open', :day, :now, :now)"
            ),
            {"now": now, "day": now.date()},
        )
        conn.execute(
            sa.text(
                "INSERT INTO prediction_sessions (id, user_id, market_id, models, web_search,"
                " status, current_step, progress, credits_charged, credits_refunded, launches,"
                " created_at, updated_at) VALUES ('s1', 1, 1, :models, false, 'running',"
                " 'predicting', :progress, 4, 0, 0, :now, :now)"
            ),
            {
                "models": '["a/b", "c/d"]',
                "progress": '{"a/b": {"status": "succeeded", "probability": 0.7},'
                ' "c/d": {"status": "running"}}',
                "now": now,
            },
        )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert session_store.session_progress(conn, "s1") == {
            "a/b": {"status": "succeeded", "probability": 0.7},
            "c/d": {"status": "running"},
        }
        charged = conn.execute(sa.text("SELECT credits_charged FROM session_models")).scalars()
        assert list(charged) == [2, 2]
    migrate.downgrade(engine, "0005")
    with engine.connect() as conn:
        progress = conn.execute(sa.text("SELECT progress FROM prediction_sessions")).scalar()
    assert "succeeded" in str(progress) and "c/d" in str(progress)
    engine.dispose()
