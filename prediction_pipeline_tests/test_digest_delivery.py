"""One day's digest delivery (services.digest_delivery and its sender, ledger and state
modules) called directly on SQLite, with a scripted transport instead of a mail server: exact
counts in the report, exact ledger rows and exactly what was handed to the transport, for the
happy path, retries, permanent and fatal errors, a tripped breaker, a stop mid-batch, claims
held, taken over or lost, and a ledger that cannot be written.

Every test runs on a copy of one prepared database (migrated once, `build_world` once): five
subscribers with news (user1..user5, ids 1..5, sent in id order with one connection), quiet@
with nothing new and gone@ opted out. Threads are synchronised by waiting on what the
delivery has done (a queue filled, a retry counted, a stop signalled), never on time.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.email import (
    FatalTransportError,
    OutgoingEmail,
    PermanentSendError,
    TransientSendError,
)
from prediction_pipeline.clients.http_retry import RetryPolicy
from prediction_pipeline.core.digests import DigestRenderer
from prediction_pipeline.services import digest_delivery, digest_ledger_writer
from prediction_pipeline.services.digest_delivery import (
    DigestDelivery,
    claimant_run_ids,
    deliver_digests,
)
from prediction_pipeline.services.digest_delivery_state import DeliveryState
from prediction_pipeline.services.digest_report import DeliveryReport
from prediction_pipeline.services.digest_settings import DeliverySettings
from prediction_pipeline.store import digest_ledger, migrate
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import users as user_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import digest_deliveries
from prediction_pipeline_tests.test_digests_asset import (
    DAY,
    GONE,
    QUIET,
    SECRET,
    SUBSCRIBERS,
    build_world,
    ledger,
    user_id,
)

# A thread that dies of an exception is a bug of the delivery, not a detail.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

U1, U2, U3, U4, U5 = SUBSCRIBERS
D = digest_deliveries.c
RUN = "run-1"
TOKEN = re.compile(r"[0-9a-f]{32}")


def retry(attempts: int, wait: float = 0.001) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_wait=wait, max_wait=wait, jitter="none")


def settings(**overrides) -> DeliverySettings:
    values = {
        "chunk_size": 2,
        "connections": 1,
        "max_messages_per_second": 1000.0,
        "retry": retry(3),
        "lease": digest_ledger.MIN_LEASE,
    }
    return DeliverySettings(**{**values, **overrides})


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` (another thread of the delivery is expected to make it true)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


# -- the scripted transport -------------------------------------------------------------------


class ScriptedSession:
    def __init__(self, transport: ScriptedTransport) -> None:
        self.transport = transport
        if transport.connections_per_session is not None:
            self.connections_opened = transport.connections_per_session

    def send(self, email: OutgoingEmail) -> str:
        return self.transport.handover(email)

    def close(self) -> None:
        with self.transport.lock:
            self.transport.closed += 1
        if self.transport.close_error is not None:
            raise self.transport.close_error


class ScriptedTransport:
    """An EmailTransport (clients.email) whose sends follow a script per recipient: each
    handover takes the recipient's next step, or `default` once the script is used up. A step
    is None (accepted: the provider id is `provider-{recipient}-{n}` for the n-th handover of
    that recipient), an exception to raise, or a callable taking the OutgoingEmail and
    returning a step. `opening` scripts the calls of `session()` the same way (callables take
    no argument). Every handover is recorded, thread-safe: recipient and Message-ID, the
    envelope sender, the sending thread's name and whether it is a daemon."""

    kind = "smtp"

    def __init__(
        self,
        script: dict[str, list] | None = None,
        *,
        default=None,
        opening: list | None = None,
        connections_per_session: int | None = 1,
        close_error: Exception | None = None,
    ) -> None:
        self.script = {address: list(steps) for address, steps in (script or {}).items()}
        self.default = default
        self.opening = list(opening or [])
        self.connections_per_session = connections_per_session
        self.close_error = close_error
        self.handovers: list[tuple[str, str]] = []
        self.envelope_senders: set[str] = set()
        self.threads: set[tuple[str, bool]] = set()
        self.session_calls = 0
        self.sessions = 0
        self.closed = 0
        self.lock = threading.Lock()

    def describe(self) -> str:
        return "scripted transport"

    def session(self) -> ScriptedSession:
        with self.lock:
            step = (
                self.opening[self.session_calls] if self.session_calls < len(self.opening) else None
            )
            self.session_calls += 1
        if callable(step):
            step = step()
        if isinstance(step, BaseException):
            raise step
        with self.lock:
            self.sessions += 1
        return ScriptedSession(self)

    def handover(self, email: OutgoingEmail) -> str:
        thread = threading.current_thread()
        with self.lock:
            self.handovers.append((email.recipient, email.message_id))
            self.envelope_senders.add(email.sender)
            self.threads.add((thread.name, thread.daemon))
            steps = self.script.get(email.recipient, [])
            step = steps.pop(0) if steps else self.default
            n = self.received()[email.recipient]
        if callable(step):
            step = step(email)
        if isinstance(step, BaseException):
            raise step
        return f"provider-{email.recipient}-{n}"

    def received(self) -> Counter[str]:
        return Counter(recipient for recipient, _ in self.handovers)


# -- the database -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def world_file(tmp_path_factory) -> Path:
    """A migrated SQLite database with `build_world`, made once; each test gets a copy."""
    path = tmp_path_factory.mktemp("digest-world") / "app.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    build_world(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_engine(world_file, tmp_path):
    """An engine on this test's own copy of the prepared world (SQLite only: fast)."""
    for suffix in ("", "-wal", "-shm"):
        source = world_file.with_name(world_file.name + suffix)
        if source.exists():
            shutil.copy(source, tmp_path / source.name)
    engine = make_engine(f"sqlite:///{tmp_path / world_file.name}")
    yield engine
    engine.dispose()


@pytest.fixture
def ids(sqlite_engine) -> dict[str, int]:
    return {a: user_id(sqlite_engine, a) for a in [*SUBSCRIBERS, QUIET, GONE]}


def message_id(engine, address: str) -> str:
    return f"<digest-{user_id(engine, address)}-{DAY}@prediction-pipeline>"


def rows(engine) -> dict[str, tuple]:
    """{email: (status, attempts, error_kind, last_error, claim_token)} for DAY."""
    return {
        email: (r.status, r.attempts, r.error_kind, r.last_error, r.claim_token)
        for email, r in ledger(engine).items()
    }


def sent_row(attempts: int = 1) -> tuple:
    return ("sent", attempts, None, None, None)


def released_row(reason: str, attempts: int = 0) -> tuple:
    return ("failed", attempts, "transient", f"not sent: {reason}", None)


def already_sent(engine, addresses) -> None:
    """As if an earlier run had sent these users today's digest."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for address in addresses:
            conn.execute(
                digest_deliveries.insert().values(
                    user_id=user_id(engine, address),
                    day=DAY,
                    status="sent",
                    attempts=1,
                    sent_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )


def claim_elsewhere(engine, address: str, run_id: str = "other-run", day: dt.date = DAY) -> int:
    """Another delivery's live claim on `address` (token "other", a lease a day ahead)."""
    uid = user_id(engine, address)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            digest_deliveries.insert().values(
                user_id=uid,
                day=day,
                status="pending",
                attempts=1,
                run_id=run_id,
                claim_token="other",
                claimed_at=now,
                lease_expires_at=now + dt.timedelta(days=1),
                created_at=now,
                updated_at=now,
            )
        )
    return uid


def take_over(engine, address: str) -> None:
    """Another delivery takes `address`'s pending row over (as if our lease had run out)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(digest_deliveries)
            .where(D.day == DAY, D.status == "pending", D.user_id == user_id(engine, address))
            .values(claim_token="thief", run_id="thief-run")
        )


def add_users(engine, count: int, *, market: str, prefix: str, subscribed: bool = True) -> list:
    """`count` more users watching `market` (ids after everyone else's)."""
    addresses = [f"{prefix}{i:02d}@example.com" for i in range(count)]
    with engine.begin() as conn:
        user_store.upsert_users(conn, [user_store.NewUser(a, None, subscribed) for a in addresses])
        market_id = market_store.get_market(conn, market).id
        pairs = [(user_store.get_user(conn, a).id, market_id) for a in addresses]
        user_store.add_watch_items(conn, pairs)
    return addresses


def new_delivery(engine, transport, *, run_id=RUN, dead_runs=(), log=None, **overrides):
    """The delivery object itself, for tests that wait on its state from another thread."""
    return DigestDelivery(
        engine,
        transport,
        DigestRenderer(SECRET),
        DAY,
        settings(**overrides),
        run_id=run_id,
        dead_runs=dead_runs,
        log=log or (lambda line: None),
    )


def deliver(engine, transport, **kwargs):
    """One whole delivery with the fast settings above (`kwargs` as for `new_delivery`)."""
    return new_delivery(engine, transport, **kwargs).run()


SUMMARY = {
    "considered": 0,
    "sent": 0,
    "skipped_nothing_new": 0,
    "skipped_opted_out": 0,
    "skipped_already_sent": 0,
    "skipped_in_flight": 0,
    "skipped_failed_earlier": 0,
    "failed_permanent": 0,
    "failed_transient": 0,
    "released": 0,
    "not_attempted": 0,
    "lost_claims": 0,
    "held_elsewhere": {},
    "attempts": 0,
    "retries": 0,
    "maybe_delivered": 0,
    "connections_opened": 0,
    "fatal": None,
    "stopped": None,
    "failures": [],
    "incomplete": False,
}


def summary(report: DeliveryReport) -> dict:
    """Every field of the report but the preview and the timings."""
    return {name: getattr(report, name) for name in SUMMARY}


def expected(**values) -> dict:
    return {**SUMMARY, **values}


# World: 7 users considered, quiet@ has nothing new, gone@ opted out.
WORLD = {"considered": 7, "skipped_nothing_new": 1, "skipped_opted_out": 1}


def render_hook(monkeypatch, before: dict[str, Callable[[], None]]) -> None:
    """Run `before[email]` in the producer right before that user's digest is rendered."""
    render = digest_delivery.render_job

    def hooked(renderer, digest, sender):
        if digest.recipient.email in before:
            before[digest.recipient.email]()
        return render(renderer, digest, sender)

    monkeypatch.setattr(digest_delivery, "render_job", hooked)


def commit_hook(monkeypatch, before: Callable[[int], None]) -> None:
    """Run `before(n)` in the ledger thread before its n-th commit (n from 1) begins: outside
    the transaction, which holds SQLite's write lock that claims need too."""
    retrying_on = digest_ledger_writer.retrying_on
    commits = []

    def hooked(*args, **kwargs):
        commits.append(1)
        before(len(commits))
        return retrying_on(*args, **kwargs)

    monkeypatch.setattr(digest_ledger_writer, "retrying_on", hooked)


# -- the happy path ---------------------------------------------------------------------------


def test_each_subscriber_gets_exactly_one_digest_and_a_second_delivery_sends_nothing(
    sqlite_engine, ids
):
    engine = sqlite_engine
    during_send = []

    def look_at_the_row(email):  # the claim, as the ledger holds it during the handover
        with engine.connect() as conn:
            during_send.append(
                conn.execute(
                    sa.select(digest_deliveries).where(D.day == DAY, D.user_id == ids[U1])
                ).one()
            )

    transport = ScriptedTransport({U1: [look_at_the_row]})
    before = time.monotonic()
    report = deliver(engine, transport)
    took = time.monotonic() - before

    assert summary(report) == expected(**WORLD, sent=5, attempts=5, connections_opened=1)
    assert transport.handovers == [(a, message_id(engine, a)) for a in SUBSCRIBERS]
    assert transport.envelope_senders == {"digest@localhost"}
    assert transport.threads == {("digest-sender-0", True)}
    assert (transport.sessions, transport.closed) == (1, 1)
    assert 0 < report.send_window_s <= report.elapsed_s <= took

    [claim] = during_send
    assert (claim.status, claim.attempts, claim.run_id) == ("pending", 1, RUN)
    assert TOKEN.fullmatch(claim.claim_token)
    assert claim.message_id == message_id(engine, U1)
    assert claim.lease_expires_at - claim.claimed_at == digest_ledger.MIN_LEASE

    assert rows(engine) == {
        **{a: sent_row() for a in SUBSCRIBERS},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }
    full = ledger(engine)
    for address in SUBSCRIBERS:
        row = full[address]
        assert row.provider_message_id == f"provider-{address}-1"
        assert row.message_id == message_id(engine, address)
        assert (row.run_id, row.lease_expires_at) == (RUN, None)
        assert row.sent_at is not None
    assert (full[QUIET].skip_reason, full[GONE].skip_reason) == ("nothing_new", "opted_out")

    again = ScriptedTransport()
    second = deliver(engine, again, run_id="run-2")
    assert summary(second) == expected(
        considered=7, skipped_already_sent=5, skipped_nothing_new=1, skipped_opted_out=1
    )
    assert (again.handovers, again.session_calls, second.send_window_s) == ([], 0, 0.0)
    assert ledger(engine)[U1].run_id == RUN


def test_the_preview_is_the_first_digest_without_its_unsubscribe_token(sqlite_engine):
    report = deliver(sqlite_engine, ScriptedTransport())
    assert report.preview.startswith("Hello User 1,\n\nYour watchlist on 2026-11-02:")
    assert report.preview.endswith(
        "Unsubscribe: http://localhost:8000/unsubscribe?token=<redacted>\n"
    )
    assert report.preview.count("token=") == 1
    meta = report.metadata()
    assert {k: v for k, v in meta.items() if k not in ("messages_per_second", "elapsed_s")} == {
        "users_considered": 7,
        "sent": 5,
        "skipped": 2,
        "skipped_nothing_new": 1,
        "skipped_opted_out": 1,
        "skipped_already_sent": 0,
        "skipped_in_flight": 0,
        "lost_claims": 0,
        "held_by_another_delivery": 0,
        "skipped_failed_earlier": 0,
        "failed": 0,
        "failed_permanent": 0,
        "failed_transient": 0,
        "released_unsent": 0,
        "not_attempted": 0,
        "send_attempts": 5,
        "send_retries": 0,
        "maybe_delivered_then_retried": 0,
        "connections_opened": 1,
    }
    assert meta["messages_per_second"] > 0


def test_the_ledger_keeps_the_message_id_the_renderer_puts_on_the_message(sqlite_engine, ids):
    engine = sqlite_engine
    transport = ScriptedTransport()
    renderer = DigestRenderer(SECRET, message_id_domain="mail.example.org")
    report = deliver_digests(engine, transport, renderer, DAY, settings(), run_id=RUN)
    assert report.sent == 5
    assert transport.handovers == [
        (a, f"<digest-{ids[a]}-{DAY}@mail.example.org>") for a in SUBSCRIBERS
    ]
    assert [ledger(engine)[a].message_id for a in SUBSCRIBERS] == [
        message_id for _, message_id in transport.handovers
    ]
    # deliver_digests passes its keyword arguments on: each row names the run that sent it.
    assert {ledger(engine)[a].run_id for a in SUBSCRIBERS} == {RUN}


def test_default_settings_are_used_when_none_are_given(sqlite_engine):
    already_sent(sqlite_engine, SUBSCRIBERS)  # nothing to send: the default rate is slow
    transport = ScriptedTransport()
    report = deliver_digests(sqlite_engine, transport, DigestRenderer(SECRET), DAY)
    assert summary(report) == expected(**WORLD, skipped_already_sent=5)


def test_each_sender_uses_its_own_connection_and_counts_what_it_opened(sqlite_engine):
    transport = ScriptedTransport(connections_per_session=3)
    # The first message waits until the second sender has opened its connection too.
    transport.script[U1] = [lambda email: wait_until(lambda: transport.sessions == 2, "2nd")]
    report = deliver(sqlite_engine, transport, connections=2)
    assert summary(report) == expected(**WORLD, sent=5, attempts=5, connections_opened=6)
    assert transport.received() == Counter(SUBSCRIBERS)
    assert {name for name, _ in transport.threads} == {"digest-sender-0", "digest-sender-1"}
    assert (transport.sessions, transport.closed) == (2, 2)


def test_a_session_without_a_connection_count_or_whose_close_fails_is_fine(sqlite_engine):
    transport = ScriptedTransport(connections_per_session=None, close_error=OSError("gone"))
    report = deliver(sqlite_engine, transport)
    assert summary(report) == expected(**WORLD, sent=5, attempts=5, connections_opened=0)
    assert transport.closed == 1


# -- transient, permanent and unexpected failures ---------------------------------------------


def test_a_transient_failure_is_retried_under_a_fresh_claim_then_sent(sqlite_engine, ids):
    engine = sqlite_engine
    during_retry = []

    def look_then_send(email):
        with engine.connect() as conn:
            during_retry.append(
                conn.execute(
                    sa.select(digest_deliveries).where(D.day == DAY, D.user_id == ids[U2])
                ).one()
            )

    transport = ScriptedTransport(
        {
            U2: [TransientSendError("421 try again later", maybe_delivered=True), look_then_send],
            U3: [TransientSendError("421 lost after DATA", maybe_delivered=True)],
            U4: [TransientSendError("450 mailbox busy")],
        }
    )
    report = deliver(engine, transport)
    assert summary(report) == expected(
        **WORLD, sent=5, attempts=8, retries=3, maybe_delivered=2, connections_opened=1
    )
    assert transport.received() == Counter({U1: 1, U2: 2, U3: 2, U4: 2, U5: 1})
    assert set(transport.handovers) == {(a, message_id(engine, a)) for a in SUBSCRIBERS}
    [claim] = during_retry  # the second attempt: counted and claimed before the handover
    assert (claim.status, claim.attempts, claim.last_error) == ("pending", 2, "421 try again later")
    assert TOKEN.fullmatch(claim.claim_token)
    assert claim.lease_expires_at - claim.claimed_at == digest_ledger.MIN_LEASE
    assert rows(engine)[U2] == ("sent", 2, None, "421 try again later", None)
    assert rows(engine)[U4] == ("sent", 2, None, "450 mailbox busy", None)
    assert ledger(engine)[U2].provider_message_id == f"provider-{U2}-2"


def test_transient_failures_until_the_retries_run_out_leave_the_user_to_the_next_run(
    sqlite_engine,
):
    engine = sqlite_engine
    failures = [TransientSendError(f"451 busy {n}") for n in (1, 2, 3)]
    transport = ScriptedTransport({U3: failures})
    report = deliver(engine, transport)
    assert summary(report) == expected(
        **WORLD,
        sent=4,
        failed_transient=1,
        attempts=7,
        retries=2,
        connections_opened=1,
        failures=[(U3, "451 busy 3")],
        incomplete=True,
    )
    assert transport.received()[U3] == 3
    assert rows(engine)[U3] == ("failed", 3, "transient", "451 busy 3", None)
    assert ledger(engine)[U3].lease_expires_at is None

    again = ScriptedTransport()
    second = deliver(engine, again)
    assert summary(second) == expected(
        **WORLD, skipped_already_sent=4, sent=1, attempts=1, connections_opened=1
    )
    assert again.handovers == [(U3, message_id(engine, U3))]
    assert rows(engine)[U3] == ("sent", 4, None, "451 busy 3", None)


def test_a_permanent_rejection_is_tried_once_and_never_again(sqlite_engine):
    engine = sqlite_engine
    transport = ScriptedTransport(
        {
            U2: [PermanentSendError("550 5.1.1 no such user")],
            U4: [PermanentSendError("554 5.7.1 refused")],
        }
    )
    report = deliver(engine, transport)
    assert summary(report) == expected(
        **WORLD,
        sent=3,
        failed_permanent=2,
        attempts=5,
        connections_opened=1,
        failures=[(U2, "550 5.1.1 no such user"), (U4, "554 5.7.1 refused")],
    )
    assert transport.received() == Counter(SUBSCRIBERS)
    rejected = {
        U2: ("failed", 1, "permanent", "550 5.1.1 no such user", None),
        U4: ("failed", 1, "permanent", "554 5.7.1 refused", None),
    }
    assert {a: rows(engine)[a] for a in (U2, U4)} == rejected

    again = ScriptedTransport()
    second = deliver(engine, again)
    assert summary(second) == expected(**WORLD, skipped_already_sent=3, skipped_failed_earlier=2)
    assert again.handovers == []
    assert {a: rows(engine)[a] for a in (U2, U4)} == rejected


def test_an_unexpected_error_fails_that_user_and_the_sender_goes_on(sqlite_engine, caplog):
    engine = sqlite_engine
    transport = ScriptedTransport({U2: [RuntimeError("x" * 600)]})
    report = deliver(engine, transport)
    error = f"unexpected: {RuntimeError('x' * 600)!r}"[:500]
    assert len(error) == 500
    assert summary(report) == expected(
        **WORLD,
        sent=4,
        failed_transient=1,
        attempts=5,
        connections_opened=1,
        failures=[(U2, error)],
        incomplete=True,
    )
    assert transport.received() == Counter(SUBSCRIBERS)
    assert rows(engine)[U2] == ("failed", 1, "transient", error, None)
    [record] = [
        r for r in caplog.records if r.name == "prediction_pipeline.services.digest_sending"
    ]
    assert (record.levelno, record.getMessage()) == (
        logging.ERROR,
        f"digest to {U2}: unexpected error",
    )
    assert record.exc_info[0] is RuntimeError


def test_only_the_first_20_failures_are_listed(sqlite_engine):
    engine = sqlite_engine
    extra = add_users(engine, 16, market="moves", prefix="extra")
    transport = ScriptedTransport(
        default=lambda email: PermanentSendError(f"550 {email.recipient}")
    )
    report = deliver(engine, transport, chunk_size=50)
    everyone = [*SUBSCRIBERS, *extra]
    assert summary(report) == expected(
        **{**WORLD, "considered": 23},
        failed_permanent=21,
        attempts=21,
        connections_opened=1,
        failures=[(a, f"550 {a}") for a in everyone[:20]],
    )


# -- the breaker and the stop signal ----------------------------------------------------------


def test_consecutive_transient_failures_stop_the_batch_and_queued_claims_are_released(
    sqlite_engine,
):
    engine = sqlite_engine

    def first(email):  # fails once the other four are queued behind it
        wait_until(lambda: delivery._jobs.qsize() >= 4, "the queue")
        return TransientSendError("421 a")

    transport = ScriptedTransport({U1: [first], U2: [TransientSendError("421 b")]})
    delivery = new_delivery(
        engine, transport, chunk_size=10, retry=retry(1), max_consecutive_failures=2
    )
    report = delivery.run()
    stopped = "2 transient send failures in a row, the last: 421 b"
    assert summary(report) == expected(
        **WORLD,
        failed_transient=2,
        released=3,
        attempts=2,
        connections_opened=1,
        stopped=stopped,
        failures=[(U1, "421 a"), (U2, "421 b")],
        incomplete=True,
    )
    assert transport.received() == Counter([U1, U2])
    assert rows(engine) == {
        U1: ("failed", 1, "transient", "421 a", None),
        U2: ("failed", 1, "transient", "421 b", None),
        **{a: released_row("batch stopped before sending") for a in (U3, U4, U5)},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }


def test_a_success_between_failures_resets_the_breaker(sqlite_engine):
    transport = ScriptedTransport(
        {U1: [TransientSendError("421 a")], U3: [TransientSendError("421 c")]}
    )
    report = deliver(sqlite_engine, transport, retry=retry(1), max_consecutive_failures=2)
    assert summary(report) == expected(
        **WORLD,
        sent=3,
        failed_transient=2,
        attempts=5,
        connections_opened=1,
        failures=[(U1, "421 a"), (U3, "421 c")],
        incomplete=True,
    )


def test_claims_the_producer_still_holds_when_the_batch_stops_are_released(
    sqlite_engine, monkeypatch
):
    engine = sqlite_engine
    transport = ScriptedTransport({U1: [TransientSendError("421 busy")]})
    delivery = new_delivery(
        engine, transport, chunk_size=10, retry=retry(1), max_consecutive_failures=1
    )

    def after_the_stop():  # user2 was queued and released by the sender meanwhile
        wait_until(lambda: delivery.report.released == 1, "the sender's release")

    render_hook(monkeypatch, {U3: after_the_stop})
    report = delivery.run()
    stopped = "1 transient send failures in a row, the last: 421 busy"
    assert summary(report) == expected(
        **WORLD,
        failed_transient=1,
        released=4,
        attempts=1,
        connections_opened=1,
        stopped=stopped,
        failures=[(U1, "421 busy")],
        incomplete=True,
    )
    assert transport.handovers == [(U1, message_id(engine, U1))]
    assert rows(engine) == {
        U1: ("failed", 1, "transient", "421 busy", None),
        U2: released_row("batch stopped before sending"),
        **{a: released_row(stopped) for a in (U3, U4, U5)},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }


def test_users_read_after_the_batch_stopped_are_not_attempted(sqlite_engine, monkeypatch):
    engine = sqlite_engine
    transport = ScriptedTransport({U1: [TransientSendError("421 busy")]})
    delivery = new_delivery(
        engine, transport, chunk_size=1, retry=retry(1), max_consecutive_failures=1
    )
    build = digest_delivery.build_digests
    calls = []

    def build_after_the_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # user2's chunk: the sender trips meanwhile
            wait_until(delivery.state.stop.is_set, "the stop")
        return build(*args, **kwargs)

    monkeypatch.setattr(digest_delivery, "build_digests", build_after_the_stop)
    report = delivery.run()
    assert summary(report) == expected(
        considered=2,
        failed_transient=1,
        not_attempted=1,
        attempts=1,
        connections_opened=1,
        stopped="1 transient send failures in a row, the last: 421 busy",
        failures=[(U1, "421 busy")],
        incomplete=True,
    )
    assert transport.received() == Counter([U1])
    assert rows(engine) == {U1: ("failed", 1, "transient", "421 busy", None)}


def test_a_stop_during_the_backoff_ends_the_wait_and_fails_the_user_transiently(sqlite_engine):
    engine = sqlite_engine
    already_sent(engine, [U3, U4, U5])

    def fatal_once_user1_waits(email):
        wait_until(lambda: delivery.report.retries == 1, "the backoff")
        return FatalTransportError("554 go away")

    transport = ScriptedTransport(
        {U1: [TransientSendError("421 wait")], U2: [fatal_once_user1_waits]}
    )
    # A minute's backoff: only the stop can end it (the test would hang otherwise).
    delivery = new_delivery(engine, transport, connections=2, chunk_size=10, retry=retry(2, 60))
    report = delivery.run()
    assert summary(report) == expected(
        **WORLD,
        skipped_already_sent=3,
        failed_transient=2,
        attempts=2,
        retries=1,
        connections_opened=2,
        fatal="554 go away",
        failures=report.failures,  # in the order the two senders finished: below
        incomplete=True,
    )
    assert sorted(report.failures) == [
        (U1, "batch stopped; last error: 421 wait"),
        (U2, "transport unusable: 554 go away"),
    ]
    assert transport.received() == Counter([U1, U2])
    assert rows(engine)[U1] == (
        "failed",
        1,
        "transient",
        "batch stopped; last error: 421 wait",
        None,
    )
    assert rows(engine)[U2] == ("failed", 1, "transient", "transport unusable: 554 go away", None)


# -- fatal errors -----------------------------------------------------------------------------


def test_a_transport_that_cannot_open_a_session_releases_every_claim(sqlite_engine):
    engine = sqlite_engine

    def refuse():  # once the other four are queued
        wait_until(lambda: delivery._jobs.qsize() >= 4, "the queue")
        return FatalTransportError("535 authentication refused")

    transport = ScriptedTransport(opening=[refuse])
    delivery = new_delivery(engine, transport, chunk_size=10)
    report = delivery.run()
    assert summary(report) == expected(
        **WORLD, released=5, fatal="535 authentication refused", incomplete=True
    )
    assert (transport.handovers, transport.sessions, transport.closed) == ([], 0, 0)
    assert rows(engine) == {
        U1: released_row("535 authentication refused"),
        **{a: released_row("batch stopped before sending") for a in (U2, U3, U4, U5)},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }
    assert all(r.lease_expires_at is None for r in ledger(engine).values())

    again = ScriptedTransport()
    second = deliver(engine, again)
    assert summary(second) == expected(**WORLD, sent=5, attempts=5, connections_opened=1)
    assert again.received() == Counter(SUBSCRIBERS)
    assert rows(engine)[U1] == ("sent", 1, None, "not sent: 535 authentication refused", None)


@pytest.mark.parametrize(
    "failure",
    [TransientSendError("connection refused"), RuntimeError("a bug in the transport " * 30)],
    ids=["transient", "bug"],
)
def test_any_error_opening_a_session_halts_and_releases_instead_of_hanging(
    sqlite_engine, failure, caplog
):
    """Only FatalTransportError is expected from session(); anything else used to end the
    sender thread: its claim stayed taken, the report said nothing of it, and with one job
    per chunk the delivery waited forever for an outcome. Now it halts like a fatal error,
    its reason cut to 500 characters and its traceback in the log."""
    engine = sqlite_engine

    def fail():  # once the other four are queued
        wait_until(lambda: delivery._jobs.qsize() >= 4, "the queue")
        return failure

    transport = ScriptedTransport(opening=[fail])
    delivery = new_delivery(engine, transport, chunk_size=10)
    done: list[DeliveryReport] = []
    runner = threading.Thread(target=lambda: done.append(delivery.run()), daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert done, "the delivery did not return after session() raised"
    reason = f"cannot open an email session: {failure!r}"[:500]
    if isinstance(failure, RuntimeError):  # its repr is 706 characters long
        assert len(reason) == 500
    [report] = done
    assert summary(report) == expected(**WORLD, released=5, fatal=reason, incomplete=True)
    assert (transport.handovers, transport.sessions, transport.closed) == ([], 0, 0)
    assert rows(engine) == {
        U1: released_row(reason),
        **{a: released_row("batch stopped before sending") for a in (U2, U3, U4, U5)},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }
    assert all(r.lease_expires_at is None for r in ledger(engine).values())
    [record] = [
        r for r in caplog.records if r.name == "prediction_pipeline.services.digest_sending"
    ]
    assert (record.levelno, record.getMessage()) == (
        logging.ERROR,
        "opening an email session failed unexpectedly",
    )
    assert record.exc_info[1] is failure

    again = ScriptedTransport()
    assert deliver(engine, again).sent == 5
    assert again.received() == Counter(SUBSCRIBERS)


def test_a_sender_stopped_while_it_opened_its_connection_gives_its_claim_back(sqlite_engine):
    engine = sqlite_engine
    already_sent(engine, [U3, U4, U5])
    transport = ScriptedTransport()

    def refuse():  # the first connection fails once the second sender is opening its own
        wait_until(lambda: transport.session_calls == 2, "the second sender")
        return FatalTransportError("535 authentication refused")

    def open_after_the_stop():
        wait_until(delivery.state.stop.is_set, "the stop")

    transport.opening = [refuse, open_after_the_stop]
    delivery = new_delivery(engine, transport, connections=2, chunk_size=10)
    report = delivery.run()
    assert summary(report) == expected(
        **WORLD,
        skipped_already_sent=3,
        released=2,
        connections_opened=1,
        fatal="535 authentication refused",
        incomplete=True,
    )
    assert (transport.handovers, transport.sessions, transport.closed) == ([], 1, 1)
    assert sorted(rows(engine)[a] for a in (U1, U2)) == [
        released_row("535 authentication refused"),
        released_row("batch stopped before sending"),
    ]


def test_a_fatal_error_from_send_halts_the_delivery(sqlite_engine, monkeypatch):
    engine = sqlite_engine
    transport = ScriptedTransport({U1: [FatalTransportError("553 sender refused")]})
    delivery = new_delivery(engine, transport, chunk_size=10)
    render_hook(
        monkeypatch,
        {U3: lambda: wait_until(lambda: delivery.report.released == 1, "the sender's release")},
    )
    report = delivery.run()
    assert summary(report) == expected(
        **WORLD,
        failed_transient=1,
        released=4,
        attempts=1,
        connections_opened=1,
        fatal="553 sender refused",
        failures=[(U1, "transport unusable: 553 sender refused")],
        incomplete=True,
    )
    assert transport.received() == Counter([U1])
    assert rows(engine) == {
        U1: ("failed", 1, "transient", "transport unusable: 553 sender refused", None),
        U2: released_row("batch stopped before sending"),
        **{a: released_row("553 sender refused") for a in (U3, U4, U5)},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }


def test_an_error_in_the_producer_releases_its_claims_and_is_reported(sqlite_engine, monkeypatch):
    engine = sqlite_engine
    delivery = new_delivery(engine, ScriptedTransport(), chunk_size=10)

    def broken():
        raise RuntimeError("template broken")

    render_hook(monkeypatch, {U1: broken})
    with pytest.raises(RuntimeError, match="template broken"):
        delivery.run()
    assert summary(delivery.report) == expected(
        **WORLD, released=5, stopped="delivery aborted: RuntimeError", incomplete=True
    )
    assert delivery.state.stop.is_set()
    assert rows(engine) == {
        **{a: released_row("delivery aborted") for a in SUBSCRIBERS},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }


# -- claims held, taken over or lost ----------------------------------------------------------


def test_a_live_claim_of_another_delivery_is_left_alone_and_the_day_is_incomplete(
    sqlite_engine,
):
    engine = sqlite_engine
    held = {claim_elsewhere(engine, U3): "other-run", claim_elsewhere(engine, U5, "run-b"): "run-b"}
    transport = ScriptedTransport()
    report = deliver(engine, transport)
    assert summary(report) == expected(
        **WORLD,
        sent=3,
        attempts=3,
        connections_opened=1,
        skipped_in_flight=2,
        held_elsewhere=held,
        incomplete=True,
    )
    assert transport.received() == Counter([U1, U2, U4])
    assert rows(engine)[U3] == rows(engine)[U5] == ("pending", 1, None, None, "other")


def test_the_claim_of_a_dead_run_is_taken_over_and_sent_once(sqlite_engine):
    engine = sqlite_engine
    claim_elsewhere(engine, U3)
    claim_elsewhere(engine, QUIET)  # nothing new for quiet@: recorded as skipped
    transport = ScriptedTransport()
    report = deliver(engine, transport, dead_runs=("other-run",))
    assert summary(report) == expected(**WORLD, sent=5, attempts=5, connections_opened=1)
    assert transport.received() == Counter(SUBSCRIBERS)
    assert rows(engine)[U3] == sent_row(attempts=2)
    assert ledger(engine)[U3].run_id == RUN
    assert rows(engine)[QUIET] == ("skipped", 1, None, None, None)
    assert ledger(engine)[QUIET].skip_reason == "nothing_new"


def test_a_live_claim_on_a_user_with_nothing_new_is_left_alone(sqlite_engine):
    engine = sqlite_engine
    held = claim_elsewhere(engine, QUIET)
    report = deliver(engine, ScriptedTransport())
    assert summary(report) == expected(
        considered=7,
        skipped_opted_out=1,
        sent=5,
        attempts=5,
        connections_opened=1,
        skipped_in_flight=1,
        held_elsewhere={held: "other-run"},
        incomplete=True,
    )
    assert rows(engine)[QUIET] == ("pending", 1, None, None, "other")


def test_a_holder_that_settles_during_the_run_leaves_it_complete(sqlite_engine, ids):
    engine = sqlite_engine
    held = claim_elsewhere(engine, U3)

    def other_delivery_finishes(email):
        with engine.begin() as conn:
            assert digest_ledger.mark_sent(conn, DAY, held, "other", "elsewhere")

    transport = ScriptedTransport({U1: [other_delivery_finishes]})
    report = deliver(engine, transport, chunk_size=10)
    assert summary(report) == expected(
        **WORLD, sent=4, attempts=4, connections_opened=1, skipped_in_flight=1
    )
    assert rows(engine)[U3] == ("sent", 1, None, None, None)


def test_held_users_count_as_unsettled_when_the_ledger_cannot_be_read_again(
    sqlite_engine, monkeypatch
):
    engine = sqlite_engine
    held = claim_elsewhere(engine, U3)

    def unreadable(*args):
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(digest_ledger, "unresolved", unreadable)
    report = deliver(engine, ScriptedTransport())
    assert report.held_elsewhere == {held: ""}
    assert (report.sent, report.skipped_in_flight, report.incomplete) == (4, 1, True)


def test_users_claimed_by_another_delivery_between_reading_and_claiming_are_held(
    sqlite_engine, monkeypatch
):
    engine = sqlite_engine
    build = digest_delivery.build_digests
    held = {}

    def another_delivery_claims_meanwhile(*args, **kwargs):
        if not held:
            held[user_id(engine, U2)] = "other-run"
            held[claim_elsewhere(engine, QUIET, run_id="run-q")] = "run-q"
            claim_elsewhere(engine, U2)
        return build(*args, **kwargs)

    monkeypatch.setattr(digest_delivery, "build_digests", another_delivery_claims_meanwhile)
    transport = ScriptedTransport()
    report = deliver(engine, transport, chunk_size=10)
    assert summary(report) == expected(
        **WORLD,
        sent=4,
        attempts=4,
        connections_opened=1,
        skipped_in_flight=1,
        held_elsewhere=held,
        incomplete=True,
    )
    assert transport.received() == Counter([U1, U3, U4, U5])
    assert rows(engine)[U2] == ("pending", 1, None, None, "other")
    assert rows(engine)[QUIET] == ("pending", 1, None, None, "other")


def test_a_claim_taken_over_mid_send_is_a_lost_claim_not_a_sent_message(sqlite_engine, ids, caplog):
    engine = sqlite_engine

    def taken_over(result):
        def step(email):
            take_over(engine, email.recipient)
            return result

        return step

    transport = ScriptedTransport(
        {U2: [taken_over(None)], U4: [taken_over(PermanentSendError("550 no"))]}
    )
    report = deliver(engine, transport)
    assert summary(report) == expected(
        **WORLD,
        sent=3,
        attempts=5,
        connections_opened=1,
        lost_claims=2,
        held_elsewhere={ids[U2]: "thief-run", ids[U4]: "thief-run"},
        incomplete=True,
    )
    assert transport.received() == Counter(SUBSCRIBERS)  # it did go out, but not ours to count
    for address in (U2, U4):  # the ledger was not touched
        assert rows(engine)[address] == ("pending", 1, None, None, "thief")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.name, r.threadName, r.getMessage()) for r in warnings] == [
        (
            "prediction_pipeline.services.digest_ledger_writer",
            "digest-ledger",
            f"digest {DAY} to {U2}: sent, but another delivery had taken the claim over; "
            "not counted as sent by this run",
        )
    ]


def test_a_claim_lost_before_the_handover_is_never_sent(sqlite_engine, ids, caplog):
    engine = sqlite_engine

    def take_over_user2(email):
        take_over(engine, U2)

    def take_over_myself_then_fail(email):  # the retry finds the claim gone
        take_over(engine, U4)
        return TransientSendError("421 later")

    transport = ScriptedTransport({U1: [take_over_user2], U4: [take_over_myself_then_fail]})
    report = deliver(engine, transport, chunk_size=10)
    assert summary(report) == expected(
        **WORLD,
        sent=3,
        attempts=4,
        retries=1,
        connections_opened=1,
        lost_claims=2,
        held_elsewhere={ids[U2]: "thief-run", ids[U4]: "thief-run"},
        incomplete=True,
    )
    assert transport.received() == Counter([U1, U3, U4, U5])
    assert rows(engine)[U2] == ("pending", 1, None, None, "thief")
    assert rows(engine)[U4] == ("pending", 1, None, None, "thief")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- the ledger thread ------------------------------------------------------------------------


def test_a_ledger_that_cannot_be_written_is_fatal_and_the_claims_stay_pending(
    sqlite_engine, monkeypatch, caplog
):
    engine = sqlite_engine
    already_sent(engine, [U1, U2, U3])
    calls = []

    def locked(*args, **kwargs):
        thread = threading.current_thread()
        calls.append((thread.name, thread.daemon))
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database is locked"))

    monkeypatch.setattr(digest_ledger_writer.store_ledger, "mark_sent", locked)
    monkeypatch.setattr(digest_ledger_writer, "LEDGER_RETRY", retry(3, 0.0))
    # user5 is handed over before the batch stops, and its outcome comes after user4's
    # commit has failed for good: two commits, each tried three times.
    commit_hook(
        monkeypatch,
        lambda n: n > 1 or wait_until(lambda: transport.received()[U5] == 1, "user5's handover"),
    )
    after_user4 = lambda email: wait_until(lambda: len(calls) == 3, "user4's commit")  # noqa: E731
    transport = ScriptedTransport({U5: [after_user4]})
    report = deliver(engine, transport, chunk_size=10)
    assert summary(report) == expected(
        **WORLD,
        skipped_already_sent=3,
        attempts=2,
        connections_opened=1,
        fatal="ledger write failed: OperationalError",
        incomplete=True,
    )
    assert calls == [("digest-ledger", True)] * 6  # 3 attempts for each of the 2 commits
    for address in (U4, U5):
        status, attempts, kind, error, token = rows(engine)[address]
        assert (status, attempts, kind, error) == ("pending", 1, None, None)
        assert TOKEN.fullmatch(token)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["digest ledger write failed; 1 outcomes lost"] * 2


def test_outcomes_finished_during_a_commit_go_into_the_next_one_in_groups(
    sqlite_engine, ids, monkeypatch
):
    engine = sqlite_engine
    mark_sent = digest_ledger.mark_sent
    commits: list[tuple[object, int]] = []  # (transaction, user id) of each write

    def recorded(conn, day, user_id, *args, **kwargs):
        commits.append((conn.get_transaction(), user_id))
        return mark_sent(conn, day, user_id, *args, **kwargs)

    monkeypatch.setattr(digest_ledger, "mark_sent", recorded)
    monkeypatch.setattr(digest_ledger_writer, "LEDGER_BATCH", 2)
    first_commit = threading.Event()

    def before_commit(n):  # user1's commit waits until the other four have finished
        if n == 1:
            first_commit.set()
            wait_until(lambda: delivery._ledger.outcomes.qsize() >= 4, "the other outcomes")

    commit_hook(monkeypatch, before_commit)
    # user2 is sent once user1's outcome is being committed, alone.
    transport = ScriptedTransport({U2: [lambda email: wait_until(first_commit.is_set, "")]})
    delivery = new_delivery(engine, transport, chunk_size=10)
    report = delivery.run()
    assert summary(report) == expected(**WORLD, sent=5, attempts=5, connections_opened=1)
    groups: list[list[int]] = []
    for i, (transaction, uid) in enumerate(commits):
        if i and transaction is commits[i - 1][0]:
            groups[-1].append(uid)
        else:
            groups.append([uid])
    assert groups == [[ids[U1]], [ids[U2], ids[U3]], [ids[U4], ids[U5]]]
    assert rows(engine) == {
        **{a: sent_row() for a in SUBSCRIBERS},
        QUIET: ("skipped", 0, None, None, None),
        GONE: ("skipped", 0, None, None, None),
    }


def test_a_producer_waiting_on_a_full_queue_sees_the_stop_and_releases_its_claim(
    sqlite_engine, ids, monkeypatch
):
    engine = sqlite_engine
    user4_rendered = threading.Event()
    render_hook(monkeypatch, {U4: user4_rendered.set})
    mark_sent = digest_ledger.mark_sent

    def locked(conn, day, user_id, *args):  # user1's outcome cannot be written
        if user_id == ids[U1]:
            raise sa.exc.OperationalError("UPDATE", {}, Exception("database is locked"))
        return mark_sent(conn, day, user_id, *args)

    monkeypatch.setattr(digest_ledger, "mark_sent", locked)
    # The ledger fails (and stops the batch) once user4 waits for room in the queue.
    commit_hook(monkeypatch, lambda n: wait_until(user4_rendered.is_set, "user4's turn"))
    monkeypatch.setattr(digest_ledger_writer, "LEDGER_RETRY", retry(3, 0.0))

    def until_user4_is_released(email):  # the one sender is busy; user3 fills the queue
        wait_until(lambda: rows(engine).get(U4, ("",))[0] == "failed", "user4's release")

    transport = ScriptedTransport({U2: [until_user4_is_released]})
    report = deliver(engine, transport, chunk_size=1)
    fatal = "ledger write failed: OperationalError"
    assert summary(report) == expected(
        considered=4,
        sent=1,
        attempts=2,
        released=2,
        connections_opened=1,
        fatal=fatal,
        incomplete=True,
    )
    assert transport.received() == Counter([U1, U2])
    assert {a: r[:4] for a, r in rows(engine).items()} == {
        U1: ("pending", 1, None, None),
        U2: sent_row()[:4],
        U3: released_row("batch stopped before sending")[:4],
        U4: released_row(fatal)[:4],
    }


# -- chunks and progress ----------------------------------------------------------------------


def test_progress_is_logged_every_20_chunks_and_every_user_is_considered(sqlite_engine, caplog):
    engine = sqlite_engine
    deliver(engine, ScriptedTransport())  # the world's five are sent
    add_users(engine, 36, market="quiet", prefix="away", subscribed=False)
    late = add_users(engine, 2, market="moves", prefix="late")  # ids 44 and 45
    lines: list[str] = []
    transport = ScriptedTransport()
    report = deliver(engine, transport, chunk_size=1, log=lines.append)
    assert summary(report) == expected(
        considered=45,
        skipped_already_sent=5,
        skipped_nothing_new=1,
        skipped_opted_out=37,
        sent=2,
        attempts=2,
        connections_opened=1,
    )
    assert transport.received() == Counter(late)
    progress = [
        f"digests {DAY}: 20 users considered, 0 sent, 20 skipped, 0 failed so far",
        f"digests {DAY}: 40 users considered, 0 sent, 40 skipped, 0 failed so far",
    ]
    assert lines == progress

    caplog.set_level(logging.INFO, logger="digest-progress")
    deliver(engine, ScriptedTransport(), chunk_size=1, log=logging.getLogger("digest-progress"))
    assert [r.getMessage() for r in caplog.records if r.name == "digest-progress"] == progress


# -- the shared state -------------------------------------------------------------------------


def make_state(engine) -> DeliveryState:
    return DeliveryState(
        engine, DAY, settings(), token="t", run_id="r", dead_runs=frozenset({"dead"})
    )


def test_the_first_fatal_reason_wins_and_a_stop_reason_is_not_recorded_after_it(sqlite_engine):
    state = make_state(sqlite_engine)
    assert (state.token, state.run_id, state.dead_runs, state.day) == ("t", "r", {"dead"}, DAY)
    assert not state.stop.is_set() and state.held == set()
    state.halt("transport gone", fatal=True)
    state.halt("ledger gone", fatal=True)
    state.halt("too many failures")
    assert (state.report.fatal, state.report.stopped) == ("transport gone", None)
    assert state.stop.is_set()


def test_the_first_stop_reason_wins_and_a_fatal_reason_is_still_recorded(sqlite_engine):
    state = make_state(sqlite_engine)
    state.halt("too many failures")
    assert state.stop.is_set()
    state.halt("later stop")
    state.halt("transport gone", fatal=True)
    assert (state.report.fatal, state.report.stopped) == ("transport gone", "too many failures")


def test_held_users_accumulate(sqlite_engine):
    state = make_state(sqlite_engine)
    state.hold([3, 1])
    state.hold({4})
    state.hold([])
    assert state.held == {1, 3, 4}


def test_the_runs_holding_pending_claims_are_listed(sqlite_engine):
    engine = sqlite_engine
    assert claimant_run_ids(engine, DAY) == []
    claim_elsewhere(engine, U2, run_id="run-b")
    claim_elsewhere(engine, U1, run_id="run-a")
    claim_elsewhere(engine, U3, run_id="run-a")
    claim_elsewhere(engine, U4, run_id="run-z", day=DAY + dt.timedelta(days=1))
    assert claimant_run_ids(engine, DAY) == ["run-a", "run-b"]
