"""Email exactly once, on SQLite and PostgreSQL: digest claims on the database's clock (two
real processes against a slow SMTP server, a sender whose clock runs ahead, leases under a
minute refused, an outcome recorded after the claim was taken over), users held by another
delivery leave the day incomplete, and session notifications are built before they are
claimed."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.email import OutboxTransport, SmtpTransport
from prediction_pipeline.core.digests import DigestRenderer
from prediction_pipeline.core.markets import Market, MarketStatus
from prediction_pipeline.defs.on_demand import jobs as on_demand_jobs
from prediction_pipeline.resources import AppDatabase, DigestSettings
from prediction_pipeline.services import digest_delivery as delivery
from prediction_pipeline.services import on_demand, sessions
from prediction_pipeline.services.digest_delivery import deliver_digests
from prediction_pipeline.services.digest_settings import DeliverySettings
from prediction_pipeline.store import digest_ledger, digest_ledger_checks
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store import users as user_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import digest_deliveries
from prediction_pipeline_tests.child_processes import CONTEXT
from prediction_pipeline_tests.fakes.smtp_server import FakeSMTPServer
from prediction_pipeline_tests.pipeline_helpers import step_error
from prediction_pipeline_tests.test_digests_asset import (
    DAY,
    SECRET,
    SUBSCRIBERS,
    build_world,
    expire_leases,
    ledger,
    run,
    smtp_transport,
    user_id,
)

MIN_LEASE = digest_ledger.MIN_LEASE
SKEW = dt.timedelta(hours=1)  # how far the skewed sender's clock runs ahead
D = digest_deliveries.c


@pytest.fixture
def world(engine):
    return build_world(engine)


@pytest.fixture(scope="module")
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def smtp():
    with FakeSMTPServer() as server:
        yield server


def settings(**kwargs) -> DeliverySettings:
    base = {"connections": 1, "max_messages_per_second": 1000.0, "lease": MIN_LEASE}
    return DeliverySettings(**{**base, **kwargs})


def skew_clocks(patch) -> None:
    """Make Python's `datetime.now()` run SKEW ahead in the digest modules (`patch` is
    `monkeypatch.setattr` or `setattr`)."""

    class Ahead(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.now(tz) + SKEW

    clock = types.SimpleNamespace(**{k: getattr(dt, k) for k in dir(dt) if k[:2] != "__"})
    clock.datetime = Ahead
    patch(digest_ledger, "dt", clock)
    patch(delivery, "dt", clock)


def hold_claim(engine, address: str, lease: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Another delivery's live `pending` claim (token "other", run "other-run") on
    `address`'s row of DAY, its lease running `lease` more."""
    uid = user_id(engine, address)
    expires = dt.datetime.now(dt.UTC) + lease
    with engine.begin() as conn:
        conn.execute(
            digest_deliveries.insert().values(
                user_id=uid,
                day=DAY,
                status="pending",
                attempts=1,
                run_id="other-run",
                claim_token="other",
                claimed_at=dt.datetime.now(dt.UTC),
                lease_expires_at=expires,
                created_at=dt.datetime.now(dt.UTC),
                updated_at=dt.datetime.now(dt.UTC),
            )
        )
    return uid


# -- two real processes, one of them with its clock an hour ahead ---------------------------


def _race_child(url, smtp_url, name, skewed, wait_for_claims, ready, out):
    """One delivery of DAY in its own process (child_processes.CONTEXT): waits for the other
    to hold claims when asked to, so that the two deliveries overlap."""
    if skewed:
        skew_clocks(setattr)
    engine = make_engine(url)
    ready.wait(60)
    deadline = time.monotonic() + 60
    while wait_for_claims and time.monotonic() < deadline:
        with engine.connect() as conn:
            if digest_ledger_checks.status_counts(conn, DAY)["pending"]:
                break
        time.sleep(0.01)
    report = deliver_digests(
        engine,
        SmtpTransport.from_url(smtp_url),
        DigestRenderer(SECRET),
        DAY,
        settings(chunk_size=2),
        run_id=f"race-{name}",
    )
    out.put((name, report.sent, report.lost_claims))


@pytest.fixture
def slow_smtp(tmp_path):
    """The benchmark sink (aiosmtpd, its own process) answering each command after 150 ms:
    a message takes about half a second, so claims stay in flight while the other runs."""
    ids = tmp_path / "ids.txt"
    sink = subprocess.Popen(
        [sys.executable, "-m", "prediction_pipeline_tests.fakes.smtp_server"]
        + ["--ids-file", str(ids), "--latency-ms", "150"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    port = int(sink.stdout.readline().split()[1])

    def received() -> Counter[str]:
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)
        return Counter(ids.read_text().split())

    yield f"smtp://127.0.0.1:{port}?starttls=false", received
    if sink.poll() is None:
        sink.kill()


def test_two_processes_one_clock_ahead_send_each_user_exactly_one_digest(
    database_url, engine, world, slow_smtp, tmp_path
):
    smtp_url, received = slow_smtp
    ctx = CONTEXT
    ready, out = ctx.Event(), ctx.Queue()
    children = [
        # `honest` starts at once; `ahead` (clock an hour fast, the shortest lease allowed)
        # starts as soon as `honest` holds claims, and would see them as expired if it
        # judged leases by its own clock.
        ctx.Process(
            target=_race_child, args=(database_url, smtp_url, name, skewed, wait, ready, out)
        )
        for name, skewed, wait in (("honest", False, False), ("ahead", True, True))
    ]
    for child in children:
        child.start()
    ready.set()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    reports = {name: rest for name, *rest in (out.get(timeout=5) for _ in children)}

    with engine.connect() as conn:
        expected = {
            f"<digest-{user_store.get_user(conn, a).id}-{DAY}@prediction-pipeline>"
            for a in SUBSCRIBERS
        }
    # Claims taken mid-send could be lost and resent: then a Message-ID would show twice.
    assert received() == Counter(expected), reports
    assert sum(sent for sent, _ in reports.values()) == len(SUBSCRIBERS)
    assert all(lost == 0 for _, lost in reports.values())
    assert {r.status for r in ledger(engine).values() if r.email in SUBSCRIBERS} == {"sent"}
    # A later run finds the day complete and sends nothing.
    later = deliver_digests(
        engine, OutboxTransport(tmp_path / "outbox"), DigestRenderer(SECRET), DAY, settings()
    )
    assert (later.sent, later.incomplete) == (0, False)


# -- leases --------------------------------------------------------------------------------


def test_a_lease_under_a_minute_is_refused_with_a_clear_error(
    database_url, engine, world, instance, smtp
):
    with pytest.raises(ValueError, match="at least 1 minute"):
        DeliverySettings(lease=dt.timedelta(seconds=59))
    with pytest.raises(ValueError, match="at least 1 minute"), engine.begin() as conn:
        digest_ledger.claim(
            conn, DAY, {1: "<x@y>"}, token="t", run_id=None, lease=dt.timedelta(seconds=1)
        )
    result = run(database_url, instance, smtp_transport(smtp), pending_lease_minutes=0.5)
    assert not result.success
    assert "digests config invalid: the digest claim lease (pending_lease_minutes) must be " in (
        step_error(result)
    )
    assert smtp.received() == []
    with engine.connect() as conn:
        assert digest_ledger_checks.status_counts(conn, DAY)["pending"] == 0  # nothing claimed


def test_a_sender_whose_clock_runs_ahead_does_not_take_a_live_claim(
    database_url, engine, world, smtp, monkeypatch
):
    # Live for 30 more minutes: a clock an hour ahead would call it expired.
    held = hold_claim(engine, SUBSCRIBERS[0], lease=dt.timedelta(minutes=30))
    skew_clocks(monkeypatch.setattr)
    report = deliver_digests(
        engine, SmtpTransport.from_url(smtp.url), DigestRenderer(SECRET), DAY, settings()
    )
    assert SUBSCRIBERS[0] not in smtp.received_by()
    assert report.held_elsewhere == {held: "other-run"}
    assert report.incomplete
    row = ledger(engine)[SUBSCRIBERS[0]]
    assert (row.status, row.claim_token) == ("pending", "other")
    # The claims this sender took carry the database's time, not its own clock's.
    with engine.connect() as conn:
        latest_claim = conn.scalar(sa.select(sa.func.max(D.claimed_at)).where(D.day == DAY))
    if latest_claim.tzinfo is None:
        latest_claim = latest_claim.replace(tzinfo=dt.UTC)
    assert latest_claim < dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)


class LeaseWatcher(OutboxTransport):
    """An outbox that notes, at each send, when the row's claim was last renewed and the
    database's time (both on the database's clock)."""

    def __init__(self, directory, engine: sa.Engine) -> None:
        super().__init__(directory)
        self.engine, self.seen = engine, []

    def send(self, email):
        with self.engine.connect() as conn:
            uid = conn.scalar(sa.select(D.user_id).where(D.message_id == email.message_id))
            claimed = conn.scalar(sa.select(D.claimed_at).where(D.user_id == uid, D.day == DAY))
            if conn.dialect.name == "sqlite":
                now = dt.datetime.fromisoformat(
                    conn.scalar(sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
                )
            else:
                now = conn.scalar(sa.text("SELECT now()"))
        self.seen.append((claimed, now))
        return super().send(email)


def test_each_claim_is_renewed_after_the_rate_limit_wait_right_before_its_send(
    engine, world, tmp_path
):
    transport = LeaseWatcher(tmp_path / "outbox", engine)
    # One chunk, one connection, 20 messages a second: the messages after the first wait in
    # the queue and for the pacer, after their claims were taken together.
    report = deliver_digests(
        engine,
        transport,
        DigestRenderer(SECRET),
        DAY,
        settings(chunk_size=50, max_messages_per_second=20.0),
    )
    assert report.sent == len(SUBSCRIBERS) == len(transport.seen)
    for (_, previous_send), (claimed, _) in zip(transport.seen, transport.seen[1:], strict=False):
        assert claimed >= previous_send  # renewed after the wait, not when the chunk was claimed


def test_a_claim_is_taken_over_only_once_its_lease_has_expired(database_url, engine, world):
    uid = user_id(engine, SUBSCRIBERS[0])
    claim = {uid: "<m@x>"}
    with engine.begin() as conn:
        assert digest_ledger.claim(conn, DAY, claim, token="a", run_id="ra", lease=MIN_LEASE)
    with engine.begin() as conn:  # live: not claimable, whatever the lease of the asker
        assert not digest_ledger.claim(
            conn, DAY, claim, token="b", run_id="rb", lease=dt.timedelta(days=1)
        )
        assert digest_ledger.refresh_claim(conn, DAY, uid, "a", MIN_LEASE)
    expire_leases(engine)
    with engine.begin() as conn:
        assert digest_ledger.claim(conn, DAY, claim, token="b", run_id="rb", lease=MIN_LEASE)
        assert not digest_ledger.refresh_claim(conn, DAY, uid, "a", MIN_LEASE)
        assert not digest_ledger.mark_sent(conn, DAY, uid, "a", "Q1")  # no longer ours
        assert digest_ledger.mark_sent(conn, DAY, uid, "b", "Q2")
    row = ledger(engine)[SUBSCRIBERS[0]]
    assert (row.status, row.provider_message_id, row.attempts) == ("sent", "Q2", 2)


class TakenOverMidSend:
    """An SMTP transport during whose send of `address` another delivery takes the row
    over (as if this sender's lease had run out mid-send)."""

    kind = "smtp"

    def __init__(self, url: str, engine: sa.Engine, address: str) -> None:
        self.inner, self.engine, self.address = SmtpTransport.from_url(url), engine, address

    def describe(self) -> str:
        return self.inner.describe()

    def session(self):
        outer, session = self, self.inner.session()

        class Session:
            def send(self, email):
                if email.recipient == outer.address:
                    with outer.engine.begin() as conn:
                        conn.execute(
                            sa.update(digest_deliveries)
                            .where(D.day == DAY, D.status == "pending")
                            .where(D.user_id == user_id(outer.engine, outer.address))
                            .values(claim_token="thief", run_id="thief-run")
                        )
                return session.send(email)

            def close(self):
                session.close()

        return Session()


def test_a_message_sent_after_the_claim_was_taken_over_is_not_counted(
    database_url, engine, world, smtp
):
    victim = SUBSCRIBERS[1]
    transport = TakenOverMidSend(smtp.url, engine, victim)
    report = deliver_digests(engine, transport, DigestRenderer(SECRET), DAY, settings())
    assert smtp.received_by()[victim] == 1  # it did go out...
    assert report.sent == len(SUBSCRIBERS) - 1  # ... but is not this run's to count
    assert report.lost_claims == 1
    assert report.held_elsewhere == {user_id(engine, victim): "thief-run"}
    assert report.incomplete
    row = ledger(engine)[victim]
    assert (row.status, row.claim_token) == ("pending", "thief")  # the ledger was not touched


# -- users held by another delivery --------------------------------------------------------


@pytest.mark.parametrize("holder", ["live", "dead"])
def test_a_user_held_by_another_run_leaves_the_day_incomplete_until_settled(
    database_url, engine, world, instance, smtp, holder
):
    # "dead": its process died and no Dagster run tells us so; only its lease can expire.
    held = hold_claim(engine, SUBSCRIBERS[2])
    first = run(database_url, instance, smtp_transport(smtp))
    assert not first.success
    error = step_error(first)
    assert "1 users claimed by another delivery were not settled" in error
    assert "other-run" in error
    assert SUBSCRIBERS[2] not in smtp.received_by()
    assert smtp.received_by() == Counter(a for a in SUBSCRIBERS if a != SUBSCRIBERS[2])

    if holder == "live":  # the other run gets its message out and records it
        with engine.begin() as conn:
            assert digest_ledger.mark_sent(conn, DAY, held, "other", "elsewhere")
    else:
        expire_leases(engine)
    later = run(database_url, instance, smtp_transport(smtp))
    assert later.success, step_error(later)
    expected = Counter(SUBSCRIBERS)
    if holder == "live":
        expected[SUBSCRIBERS[2]] = 0  # sent by the other run, not through this server
    assert smtp.received_by() == +expected
    assert ledger(engine)[SUBSCRIBERS[2]].status == "sent"


def test_a_holder_that_settles_during_the_run_leaves_it_complete(engine, world, tmp_path):
    held = hold_claim(engine, SUBSCRIBERS[0])

    class SettleOnFirstSend(OutboxTransport):
        def send(self, email):
            with engine.begin() as conn:  # the other delivery finishes meanwhile
                digest_ledger.mark_sent(conn, DAY, held, "other", "elsewhere")
            return super().send(email)

    transport = SettleOnFirstSend(tmp_path / "outbox")
    report = deliver_digests(engine, transport, DigestRenderer(SECRET), DAY, settings())
    assert report.skipped_in_flight == 1
    assert (report.held_elsewhere, report.incomplete) == ({}, False)


# -- session notifications -----------------------------------------------------------------


@pytest.fixture
def session_id(engine) -> str:
    """A finished session on a market whose question spans two lines."""
    market = Market(
        source="test",
        source_id="two-lines",
        question="Will it rain\nin Paris?",
        end_date=dt.datetime(2026, 12, 31, tzinfo=dt.UTC),
        volume=1.0,
        yes_price=0.4,
        status=MarketStatus.OPEN,
    )
    with engine.begin() as conn:
        market_store.ingest_markets(conn, [market], DAY)
    on_demand.grant(engine, "ada@example.com", 3)
    sid = on_demand.create_session(engine, "two-lines", ["baseline/market"], "ada@example.com")
    with engine.begin() as conn:
        session_store.start_session(conn, sid, "run-1")
    on_demand.settle_session(engine, sid)
    return sid


def notify(database_url, smtp, sid: str) -> None:
    context = dg.build_op_context(
        resources={
            "app_db": AppDatabase(url=database_url),
            "email_transport": smtp_transport(smtp),
            "digest_settings": DigestSettings(unsubscribe_secret=SECRET),
        },
    )
    on_demand_jobs.notify(context, on_demand_jobs.SessionConfig(session_id=sid), "completed")


def test_a_notification_that_cannot_be_built_is_not_claimed(
    database_url, engine, smtp, session_id, monkeypatch
):
    def broken(**kwargs):
        raise ValueError("cannot build")

    monkeypatch.setattr(sessions, "session_summary", broken)
    with pytest.raises(ValueError, match="cannot build"):
        notify(database_url, smtp, session_id)
    with engine.connect() as conn:
        assert session_store.get_session(conn, session_id).notified_at is None  # not claimed
    monkeypatch.undo()
    notify(database_url, smtp, session_id)  # the op's retry
    notify(database_url, smtp, session_id)  # and one more: already notified
    assert smtp.received_by() == Counter({"ada@example.com": 1})


def test_a_question_with_a_newline_is_notified_exactly_once(database_url, engine, smtp, session_id):
    for _ in range(2):  # the first attempt and a retry of the op
        notify(database_url, smtp, session_id)
    [message] = smtp.received()
    assert message.message["Subject"].endswith(": Will it rain in Paris?")
    assert "Will it rain\nin Paris?" in message.message.get_content()
    with engine.connect() as conn:
        assert session_store.get_session(conn, session_id).notified_at is not None
