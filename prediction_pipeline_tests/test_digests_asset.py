"""The `watchlist_digests` asset against a real SMTP server on loopback (aiosmtpd) and the
outbox, on SQLite and PostgreSQL: content, headers and escaping of what arrives; faults
partway through a batch; permanent rejections; a crash between "accepted" and "marked sent";
exactly one email per user and day through re-runs."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.core.digests import verify_unsubscribe_token
from prediction_pipeline.core.forecast import ForecastResult, MarketContext
from prediction_pipeline.core.markets import Market, MarketStatus
from prediction_pipeline.defs.digests.assets import watchlist_digests
from prediction_pipeline.resources import AppDatabase, DigestSettings, EmailTransportResource
from prediction_pipeline.store import digest_ledger_checks
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import users as user_store
from prediction_pipeline.store.tables import digest_deliveries, forecast_scores
from prediction_pipeline_tests.fakes.smtp_server import FakeSMTPServer
from prediction_pipeline_tests.pipeline_helpers import materialization_metadata, step_error

DAY = dt.date(2026, 11, 2)
PREV = DAY - dt.timedelta(days=1)
SECRET = "test-unsubscribe-secret"
TITLE = '<script>alert(1)</script> & "quotes"'
SUBSCRIBERS = [f"user{i}@example.com" for i in range(1, 6)]
QUIET, GONE = "quiet@example.com", "gone@example.com"
FAST = {
    "chunk_size": 2,  # several chunks even for a handful of users
    "max_messages_per_second": 1000.0,
    "connections": 2,
    "retry_initial_wait_seconds": 0.01,
    "retry_max_wait_seconds": 0.05,
    "retries_when_incomplete": 0,
}


def _market(sid: str, question: str, price: float, status=MarketStatus.OPEN, outcome=None):
    return Market(
        source="test",
        source_id=sid,
        question=question,
        end_date=dt.datetime(2026, 12, 31, tzinfo=dt.UTC),
        volume=1000.0,
        yes_price=price,
        status=status,
        resolved_outcome=outcome,
    )


def _predict(conn, market_id: int, sid: str, model: str, day: dt.date, p: float, price: float):
    ctx = MarketContext(
        market_id=market_id, source_id=sid, question=sid, day=day, market_price=price
    )
    return prediction_store.store_prediction(conn, ctx, model, ForecastResult(probability=p))


def build_world(engine: sa.Engine) -> dict[str, int]:
    """Five markets seen yesterday and today: `moves` (titled with markup) moved 40 -> 46,
    `flat` stayed, `resolves` resolved YES today (scored), `closes` closed today, `quiet`
    stayed and has no forecast. Five subscribers watch the first four; `quiet@` watches only
    `quiet` (nothing new for them); `gone@` unsubscribed. Everyone got yesterday's digest."""
    yesterday = [
        _market("moves", TITLE, 0.40),
        _market("flat", "Will it rain in Paris?", 0.70),
        _market("resolves", "Will the launch happen?", 0.80),
        _market("closes", "Will the vote pass?", 0.30),
        _market("quiet", "Will nothing happen?", 0.50),
    ]
    today = [
        _market("moves", TITLE, 0.46),
        _market("flat", "Will it rain in Paris?", 0.70),
        _market("resolves", "Will the launch happen?", 1.0, MarketStatus.RESOLVED, "yes"),
        _market("closes", "Will the vote pass?", 0.30, MarketStatus.CLOSED),
        _market("quiet", "Will nothing happen?", 0.50),
    ]
    with engine.begin() as conn:
        market_store.ingest_markets(conn, yesterday, PREV)
        market_store.ingest_markets(conn, today, DAY)
        ids = {
            sid: market_store.get_market(conn, sid).id
            for sid in ("moves", "flat", "resolves", "closes", "quiet")
        }
        for model, p in (("baseline/market", 0.42), ("baseline/momentum", 0.35)):
            _predict(conn, ids["moves"], "moves", model, PREV, p, 0.40)
            _predict(conn, ids["moves"], "moves", model, DAY, p + 0.04, 0.46)
            pid = _predict(conn, ids["resolves"], "resolves", model, PREV, p + 0.4, 0.80)
            conn.execute(
                forecast_scores.insert().values(
                    prediction_id=pid,
                    model_slug=model,
                    market_id=ids["resolves"],
                    probability=p + 0.4,
                    market_price=0.8,
                    outcome=1.0,
                    brier=(1 - (p + 0.4)) ** 2,
                    log_score=-0.1,
                    market_brier=0.04,
                    scored_at=dt.datetime.now(dt.UTC),
                )
            )
        _predict(conn, ids["flat"], "flat", "baseline/market", PREV, 0.70, 0.70)
        user_store.upsert_users(
            conn,
            [user_store.NewUser(e, f"User {n}") for n, e in enumerate(SUBSCRIBERS, 1)]
            + [user_store.NewUser(QUIET, "Quiet"), user_store.NewUser(GONE, "Gone")],
        )
        added = dt.datetime.combine(PREV - dt.timedelta(days=5), dt.time(9), tzinfo=dt.UTC)
        pairs = []
        for address in SUBSCRIBERS:
            uid = user_store.get_user(conn, address).id
            pairs += [(uid, ids[s]) for s in ("moves", "flat", "resolves", "closes")]
        pairs.append((user_store.get_user(conn, QUIET).id, ids["quiet"]))
        gone = user_store.get_user(conn, GONE).id
        pairs.append((gone, ids["moves"]))
        user_store.add_watch_items(conn, pairs, added_at=added)
        user_store.set_subscription(conn, gone, False)
        sent_at = dt.datetime.combine(PREV, dt.time(8), tzinfo=dt.UTC)
        for address in [*SUBSCRIBERS, QUIET]:
            conn.execute(
                digest_deliveries.insert().values(
                    user_id=user_store.get_user(conn, address).id,
                    day=PREV,
                    status="sent",
                    attempts=1,
                    sent_at=sent_at,
                    created_at=sent_at,
                    updated_at=sent_at,
                )
            )
    return ids


@pytest.fixture
def world(engine):
    return build_world(engine)


@pytest.fixture(scope="module")
def instance():
    # One Dagster instance for the module (runs of different tests do not interact; each
    # test has its own app database): creating one costs about half a second.
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def smtp():
    with FakeSMTPServer() as server:
        yield server


def smtp_transport(server: FakeSMTPServer) -> EmailTransportResource:
    return EmailTransportResource(kind="smtp", smtp_url=server.url, timeout_seconds=5)


def run(database_url, instance, transport: EmailTransportResource, **config):
    return dg.materialize(
        [watchlist_digests],
        partition_key=DAY.isoformat(),
        resources={
            "app_db": AppDatabase(url=database_url),
            "email_transport": transport,
            "digest_settings": DigestSettings(unsubscribe_secret=SECRET),
        },
        instance=instance,
        run_config={"ops": {"watchlist_digests": {"config": {**FAST, **config}}}},
        raise_on_error=False,
    )


def ledger(engine) -> dict[str, object]:
    with engine.connect() as conn:
        return {row.email: row for row in digest_ledger_checks.delivery_rows(conn, DAY)}


def expire_leases(engine) -> None:
    """As if the leases of all pending claims had run out (instead of waiting a minute)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(digest_deliveries)
            .where(digest_deliveries.c.status == "pending")
            .values(lease_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        )


def user_id(engine, address: str) -> int:
    with engine.connect() as conn:
        return user_store.get_user(conn, address).id


# -- content, headers, escaping -----------------------------------------------------------


def test_digests_arrive_once_with_both_parts_headers_and_escaped_html(
    database_url, engine, world, instance, smtp
):
    result = run(database_url, instance, smtp_transport(smtp))
    assert result.success, step_error(result)
    meta = materialization_metadata(result, "watchlist_digests")
    assert meta["users_considered"] == 7
    assert (meta["sent"], meta["failed"]) == (5, 0)
    assert (meta["skipped_nothing_new"], meta["skipped_opted_out"]) == (1, 1)
    assert "Hello User" in meta["preview"] and "token=<redacted>" in meta["preview"]
    assert SECRET not in str(meta)
    assert all(c.passed for c in result.get_asset_check_evaluations())

    received = smtp.received()
    assert smtp.received_by() == Counter(SUBSCRIBERS)  # one each, nobody else
    for msg in received:
        m = msg.message
        address = msg.rcpt_tos[0]
        uid = user_id(engine, address)
        assert m.get_content_type() == "multipart/alternative"
        text = m.get_body(("plain",)).get_content().replace("\r\n", "\n")
        html = m.get_body(("html",)).get_content()
        assert m["From"] == "Prediction Pipeline <digest@localhost>"
        assert address in m["To"] and "User" in m["To"]
        assert m["Subject"] == f"Your watchlist on {DAY}: 1 moved, 2 settled"
        assert m["Message-ID"] == f"<digest-{uid}-{DAY}@prediction-pipeline>"
        assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = m["List-Unsubscribe"].strip("<>")
        assert link.startswith("http://localhost:8000/unsubscribe?token=")
        assert verify_unsubscribe_token(link.split("token=")[1], SECRET, email=address) == uid
        assert link in text and link in html
        # Markup from outside is escaped in HTML, verbatim in plain text.
        assert "<script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quotes&#34;" in html
        assert TITLE in text
        # What changed: the price move, forecasts with deltas, resolution with scores.
        assert "+6.0 pts since 2026-11-01" in text
        assert "baseline/market: 46% on 2026-11-02; market minus model ±0.0 pts (new)" in text
        assert "baseline/momentum: 39% on 2026-11-02; market minus model +7.0 pts (new)" in text
        assert "Resolved YES; last price 100%" in text
        assert (
            "baseline/market: Brier 0.032 over 1 forecast (market 0.040, beat the market)" in text
        )
        assert "Closed, awaiting resolution" in text
        assert "Will it rain in Paris?" in text  # still watched, flat
    rows = ledger(engine)
    for address in SUBSCRIBERS:
        row = rows[address]
        assert (row.status, row.attempts, row.error_kind) == ("sent", 1, None)
        assert row.provider_message_id.startswith("Q") and row.sent_at is not None
        assert row.message_id == f"<digest-{row.user_id}-{DAY}@prediction-pipeline>"
    assert (rows[QUIET].status, rows[QUIET].skip_reason) == ("skipped", "nothing_new")
    assert (rows[GONE].status, rows[GONE].skip_reason) == ("skipped", "opted_out")

    # A day that is complete sends nothing.
    again = run(database_url, instance, smtp_transport(smtp))
    meta = materialization_metadata(again, "watchlist_digests")
    assert (meta["sent"], meta["skipped_already_sent"], meta["send_attempts"]) == (0, 5, 0)
    assert len(smtp.received()) == 5


def test_news_arriving_later_in_the_day_is_still_sent(database_url, engine, world, instance, smtp):
    assert run(database_url, instance, smtp_transport(smtp)).success
    with engine.begin() as conn:  # a forecast on the quiet market lands after the first run
        _predict(conn, world["quiet"], "quiet", "baseline/market", DAY, 0.5, 0.5)
    result = run(database_url, instance, smtp_transport(smtp))
    meta = materialization_metadata(result, "watchlist_digests")
    assert (meta["sent"], meta["skipped_already_sent"]) == (1, 5)
    assert smtp.received_by() == Counter([*SUBSCRIBERS, QUIET])


# -- faults partway through a batch --------------------------------------------------------


def test_421_and_a_dropped_connection_mid_batch_are_retried_once_each(
    database_url, engine, world, instance, smtp
):
    smtp.fail_rcpt(3, "421 4.3.0 Service not available")  # and the server hangs up
    result = run(database_url, instance, smtp_transport(smtp), connections=1)
    assert result.success, step_error(result)
    meta = materialization_metadata(result, "watchlist_digests")
    assert (meta["sent"], meta["send_retries"], meta["failed"]) == (5, 1, 0)
    assert meta["connections_opened"] == 2  # reconnected after the hang-up
    assert smtp.received_by() == Counter(SUBSCRIBERS)
    third = smtp.rcpts[2]
    rows = ledger(engine)
    assert rows[third].attempts == 2 and rows[third].status == "sent"
    assert "421" in rows[third].last_error
    for address in SUBSCRIBERS:  # the ledger counts exactly what the server saw
        assert rows[address].attempts == smtp.rcpt_count(address)


def test_server_down_partway_then_the_rerun_sends_each_remaining_user_once(
    database_url, engine, world, instance, smtp
):
    smtp.down_after(2)  # two messages go through, then every RCPT gets 421 and a hang-up
    result = run(database_url, instance, smtp_transport(smtp), connections=1, max_send_attempts=2)
    assert not result.success
    assert "incomplete" in step_error(result) and "3 failed transiently" in step_error(result)
    first_two = [m.rcpt_tos[0] for m in smtp.received()]
    assert len(first_two) == 2
    rows = ledger(engine)
    for address in SUBSCRIBERS:
        row = rows[address]
        assert row.attempts == smtp.rcpt_count(address)  # claimed before every handover
        if address in first_two:
            assert row.status == "sent"
        else:
            assert (row.status, row.error_kind, row.attempts) == ("failed", "transient", 2)
            assert "421" in row.last_error

    smtp.up()
    rerun = run(database_url, instance, smtp_transport(smtp))
    assert rerun.success, step_error(rerun)
    meta = materialization_metadata(rerun, "watchlist_digests")
    assert (meta["sent"], meta["skipped_already_sent"]) == (3, 2)
    assert smtp.received_by() == Counter(SUBSCRIBERS)  # every user exactly one message
    assert all(ledger(engine)[a].status == "sent" for a in SUBSCRIBERS)


def test_the_step_retries_itself_and_resumes_with_only_the_users_left(
    database_url, engine, world, instance, smtp
):
    smtp.fail_rcpt(1, "421 4.3.0 Service not available")  # one failure, no in-run retry
    result = run(
        database_url,
        instance,
        smtp_transport(smtp),
        max_send_attempts=1,
        retries_when_incomplete=1,
        retry_delay_seconds=0,
    )
    assert result.success, step_error(result)
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    meta = materialization_metadata(result, "watchlist_digests")  # the second attempt's
    assert (meta["sent"], meta["skipped_already_sent"]) == (1, 4)
    assert smtp.received_by() == Counter(SUBSCRIBERS)
    assert ledger(engine)[smtp.rcpts[0]].attempts == 2


def test_a_dead_server_stops_the_batch_and_unsent_claims_are_released(
    database_url, engine, world, instance, smtp
):
    smtp.down()
    result = run(
        database_url,
        instance,
        smtp_transport(smtp),
        connections=1,
        max_send_attempts=2,
        max_consecutive_failures=2,
    )
    assert not result.success and "transient send failures in a row" in step_error(result)
    rows = ledger(engine)
    reached = [a for a in SUBSCRIBERS if a in rows]  # the rest were never read: no row
    assert 0 < len(reached) < len(SUBSCRIBERS)
    for address in reached:  # nothing sent; attempts are what reached the server
        assert (rows[address].status, rows[address].error_kind) == ("failed", "transient")
        assert rows[address].attempts == smtp.rcpt_count(address)
    assert sum(rows[a].attempts for a in reached) == 2  # then the breaker stopped the batch
    assert any("not sent" in rows[a].last_error for a in reached)  # released claims
    smtp.up()
    assert run(database_url, instance, smtp_transport(smtp)).success
    assert smtp.received_by() == Counter(SUBSCRIBERS)


def test_a_550_recipient_is_failed_after_one_attempt_and_never_retried(
    database_url, engine, world, instance, smtp
):
    bad = SUBSCRIBERS[1]
    smtp.reject(bad, "550 5.1.1 <user2@example.com>: Recipient address rejected")
    result = run(database_url, instance, smtp_transport(smtp))
    assert result.success, step_error(result)  # a bad address is not a failed run
    meta = materialization_metadata(result, "watchlist_digests")
    assert (meta["sent"], meta["failed_permanent"], meta["send_retries"]) == (4, 1, 0)
    row = ledger(engine)[bad]
    assert (row.status, row.error_kind, row.attempts) == ("failed", "permanent", 1)
    assert "550" in row.last_error
    assert smtp.rcpt_count(bad) == 1

    again = run(database_url, instance, smtp_transport(smtp))
    meta = materialization_metadata(again, "watchlist_digests")
    assert (meta["sent"], meta["skipped_failed_earlier"]) == (0, 1)
    assert smtp.rcpt_count(bad) == 1 and ledger(engine)[bad].attempts == 1
    assert smtp.received_by() == Counter(a for a in SUBSCRIBERS if a != bad)


# -- the crash window ---------------------------------------------------------------------

CRASHING_DELIVERY = textwrap.dedent(
    """
    import datetime as dt, os, sys
    from prediction_pipeline.clients.email import SmtpTransport
    from prediction_pipeline.core.digests import DigestRenderer
    from prediction_pipeline.services.digest_delivery import deliver_digests
    from prediction_pipeline.services.digest_settings import DeliverySettings
    from prediction_pipeline.store.db import make_engine

    class CrashAfterAccept:
        # Hands the n-th message to the server, then the process dies before the ledger
        # hears of it (os._exit: no cleanup, no finally).
        def __init__(self, inner, n):
            self.inner, self.n, self.count = inner, n, 0
        def send(self, email):
            provider_id = self.inner.send(email)
            self.count += 1
            if self.count == self.n:
                os._exit(17)
            return provider_id
        def close(self):
            self.inner.close()

    class Transport:
        kind = "smtp"
        def __init__(self, url):
            self.inner = SmtpTransport.from_url(url)
        def describe(self):
            return self.inner.describe()
        def session(self):
            return CrashAfterAccept(self.inner.session(), 3)

    url, smtp_url, day, secret = sys.argv[1:5]
    deliver_digests(
        make_engine(url), Transport(smtp_url), DigestRenderer(secret),
        dt.date.fromisoformat(day), DeliverySettings(connections=1, max_messages_per_second=1000),
    )
    """
)


def test_a_crash_after_the_server_accepted_resends_with_the_same_message_id(
    database_url, engine, world, instance, smtp
):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_DELIVERY, database_url, smtp.url, DAY.isoformat(), SECRET],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 17, crashed.stderr
    assert len(smtp.received()) == 3
    rows = ledger(engine)
    pending = [a for a in SUBSCRIBERS if rows[a].status == "pending"]
    sent = [a for a in SUBSCRIBERS if rows[a].status == "sent"]
    third = smtp.received()[2].rcpt_tos[0]
    assert third in pending  # accepted by the server, never marked sent: the crash window
    assert len(pending) + len(sent) == 5 and len(sent) <= 2

    # The claims are fresh and their delivery had no Dagster run to ask about: a run now
    # leaves them alone (they might still be in flight), and the day is not complete...
    result = run(database_url, instance, smtp_transport(smtp))
    assert not result.success
    assert f"{len(pending)} users claimed by another delivery" in step_error(result)
    assert len(smtp.received()) == 3
    # ... until the lease expires (on the database's clock): then they are sent again
    # (at-least-once).
    expire_leases(engine)
    result = run(database_url, instance, smtp_transport(smtp))
    assert result.success, step_error(result)
    meta = materialization_metadata(result, "watchlist_digests")
    assert meta["sent"] == len(pending)
    counts = smtp.received_by()
    assert set(counts) == set(SUBSCRIBERS)  # nobody skipped
    twice = {a for a, n in counts.items() if n == 2}
    assert twice <= set(pending) and third in twice and max(counts.values()) == 2
    for address in twice:  # the second copy is deduplicable: same Message-ID
        ids = {m.message_id for m in smtp.received() if m.rcpt_tos == [address]}
        assert ids == {f"<digest-{user_id(engine, address)}-{DAY}@prediction-pipeline>"}
        assert ledger(engine)[address].attempts == 2
    assert all(ledger(engine)[a].status == "sent" for a in SUBSCRIBERS)


def test_claims_of_a_finished_run_are_taken_over_without_waiting_for_the_lease(
    database_url, engine, world, instance, smtp, tmp_path
):
    (tmp_path / "a-file").write_text("")
    unusable = EmailTransportResource(kind="outbox", outbox_dir=str(tmp_path / "a-file" / "x"))
    finished = run(database_url, instance, unusable)
    assert not finished.success  # the outbox cannot be created: nothing sent, all released
    assert "cannot create outbox" in step_error(finished)
    assert {r.status for r in ledger(engine).values()} <= {"failed", "skipped"}
    assert all(r.attempts == 0 for r in ledger(engine).values())  # released, never handed over
    uid = user_id(engine, SUBSCRIBERS[0])
    with engine.begin() as conn:  # pretend that run died holding a claim
        conn.execute(
            sa.update(digest_deliveries)
            .where(digest_deliveries.c.user_id == uid, digest_deliveries.c.day == DAY)
            .values(
                status="pending",
                run_id=finished.run_id,
                claim_token="dead",
                claimed_at=dt.datetime.now(dt.UTC),
                lease_expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),  # still live
            )
        )
    result = run(database_url, instance, smtp_transport(smtp))
    assert result.success, step_error(result)
    assert smtp.received_by() == Counter(SUBSCRIBERS)


# -- outbox, checks, schedule -------------------------------------------------------------


def test_outbox_writes_one_eml_per_user_and_day(database_url, engine, world, instance, tmp_path):
    outbox = tmp_path / "outbox"
    transport = EmailTransportResource(kind="outbox", outbox_dir=str(outbox))
    result = run(database_url, instance, transport)
    assert result.success, step_error(result)
    logs = " ".join(e.message for e in instance.all_logs(result.run_id))
    assert "INSECURE" not in logs  # a secret is configured
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 5
    for path in files:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert path.name == message["Message-ID"].strip("<>") + ".eml"
        assert "&lt;script&gt;" in message.get_body(("html",)).get_content()
    rows = ledger(engine)
    assert {rows[a].provider_message_id for a in SUBSCRIBERS} == {p.name for p in files}
    assert run(database_url, instance, transport).success
    assert len(list(outbox.iterdir())) == 5  # nothing new, no temporary files left


def test_the_ledger_refuses_a_second_row_for_a_user_and_day(engine, world):
    uid = user_id(engine, SUBSCRIBERS[0])
    now = dt.datetime.now(dt.UTC)
    row = {"user_id": uid, "day": PREV, "status": "sent", "created_at": now, "updated_at": now}
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(digest_deliveries.insert().values(**row))
    with engine.connect() as conn:
        assert digest_ledger_checks.ledger_is_unique_per_user_and_day(conn)
        assert digest_ledger_checks.duplicate_sent(conn, PREV) == 0


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_no_secret_in_logs_or_metadata(database_url, engine, world, instance):
    password = "sm7p-p4ss-w0rd"
    with FakeSMTPServer(auth=("mailer", password)) as server:
        result = dg.materialize(
            [watchlist_digests],
            partition_key=DAY.isoformat(),
            resources={
                "app_db": AppDatabase(url=database_url),
                "email_transport": EmailTransportResource(smtp_url=server.url),
                "digest_settings": DigestSettings(unsubscribe_secret=SECRET),
            },
            instance=instance,
            run_config={"ops": {"watchlist_digests": {"config": FAST}}},
        )
    assert result.success and server.auth_attempts[0] == ("mailer", True)
    meta = materialization_metadata(result, "watchlist_digests")
    assert meta["transport"] == f"smtp://mailer:***@127.0.0.1:{server.port}"
    logs = " ".join(e.message for e in instance.all_logs(result.run_id))
    assert SECRET not in logs and SECRET not in str(meta)
    assert password not in logs and password not in str(meta)
