"""Fan-out of one day's watchlist digests: exactly one email per user and day.

How a delivery runs (`deliver_digests`):

1. The users who watch markets are read in chunks of `chunk_size` (keyset on the user id). For
   each chunk the ledger (`digest_deliveries`) is read first: users already `sent`, failed for
   good (`failed`/permanent) or held by a live claim of another delivery are counted and left
   alone. Opted-out users and users with nothing new are recorded as `skipped` (with the
   reason; a later run of the day looks at them again, so news that lands later still goes out).
2. The users with news are *claimed* in one committed transaction: their rows become `pending`
   with `attempts + 1`, this delivery's claim token, the Dagster run id and a lease
   (`lease_expires_at`, on the database's clock). Then each digest is rendered and queued.
3. `connections` sender threads, each with its own SMTP connection (or outbox session), take
   messages from the queue at no more than `max_messages_per_second` in all
   (`clients.rate_limit.ThreadPacer`: monotonic pacing, no bursts), and retry transient
   failures under the shared retry policy (`clients.http_retry.retrying_on`: exponential
   backoff with jitter; the ledger thread's commits retry through it too). After the
   pacing wait and right before each handover the claim gets a fresh lease (one committed
   update; a further attempt also counts `attempts + 1`), so the whole lease covers the send
   and the ledger counts what was handed to the transport. If the claim is no longer ours, the
   message is not sent. Permanent rejections (SMTP 5xx) are final: one attempt, `failed`.
4. Outcomes are written back by one ledger thread (group commit: whatever finished since its
   last commit goes into the next transaction): `sent` with the provider's id, `failed` with
   the error and its kind, or *released* (claimed but never handed over: the batch stopped).
   Each write is fenced by the claim token: if another delivery took the row over meanwhile,
   nothing is written and the outcome counts as a *lost claim*, not as sent by this run.

Why no user gets two emails: a row is claimed by one delivery at a time (a conditional upsert,
atomic on SQLite and PostgreSQL), `sent` rows are never claimed again, the claim is committed
before the message is handed over, and a live claim is never taken over: its lease (at least
one minute, renewed right before the send) is judged by the database's clock, so a sender
whose clock runs ahead, or that is configured with a shorter lease, still sees it as live.

Why no user is skipped: every failure path leaves the row claimable by the next run
(`failed`/transient, released) and the asset fails so that Dagster's retry policy re-runs it;
only a process killed outright leaves a row `pending`, and that claim is treated as dead once
its run is finished (asked of the Dagster instance) or once its lease has expired
(`pending_lease_minutes`, default 30): then it is sent again. Users held by another delivery's
claim are not settled by this run: they are looked at again after the batch, and those still
not `sent`, `failed` for good or `skipped` leave the run *incomplete* (`held_elsewhere`), so
the asset fails (after its own retries) instead of ending green while they wait on a claim
that may belong to a dead process.

The crash window, and the choice made: between "the server accepted the message" and "the
ledger says sent" a crash (or a connection lost after the data went out) leaves the row
`pending`. We choose **at-least-once** for that window: the row is retried as above, because
skipping a user silently is the worse failure for a daily digest, and the window is one
message per sender plus the ledger thread's latency (one commit). Every copy of a (user, day)
digest carries the same Message-ID, `<digest-{user_id}-{day}@{domain}>`, so a second copy is
deduplicable downstream (by the provider, by mail clients, by our own outbox, which writes one
file per Message-ID). Everything else is exactly once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from prediction_pipeline.clients.email import (
    EmailSession,
    EmailTransport,
    FatalTransportError,
    OutgoingEmail,
    PermanentSendError,
    TransientSendError,
    envelope_address,
    send_retrying,
)
from prediction_pipeline.clients.http_retry import RetryPolicy, retrying_on
from prediction_pipeline.clients.rate_limit import ThreadPacer
from prediction_pipeline.core import digests as core
from prediction_pipeline.store import digest_content as store_content
from prediction_pipeline.store import digest_ledger as store_ledger

logger = logging.getLogger(__name__)

_STOP = object()  # sentinel for the queues
_LEDGER_BATCH = 500  # outcomes per ledger transaction at most
# A ledger commit that hits a locked or dropped database: 3 attempts, 0.5 s then 1 s apart.
_LEDGER_RETRY = RetryPolicy(max_attempts=3, initial_wait=0.5, max_wait=2.0, jitter="none")


@dataclass(frozen=True)
class DeliverySettings:
    chunk_size: int = 500
    max_messages_per_second: float = 10.0
    connections: int = 2
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=4, initial_wait=1.0, max_wait=30.0)
    )
    min_price_change: float = core.DEFAULT_MIN_PRICE_CHANGE
    lease: dt.timedelta = dt.timedelta(minutes=30)
    max_consecutive_failures: int = 25

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.connections < 1 or self.max_messages_per_second <= 0:
            raise ValueError("chunk_size and connections must be >= 1, the rate > 0")
        store_ledger.check_lease(self.lease)


def delivery_settings(
    *,
    chunk_size: int,
    max_messages_per_second: float,
    connections: int,
    max_send_attempts: int,
    retry_initial_wait_seconds: float,
    retry_max_wait_seconds: float,
    min_price_change: float,
    pending_lease_minutes: float,
    max_consecutive_failures: int,
) -> DeliverySettings:
    """DeliverySettings from the asset's run config (its units and names); raises ValueError
    when they are invalid (a lease under MIN_LEASE...)."""
    return DeliverySettings(
        chunk_size=chunk_size,
        max_messages_per_second=max_messages_per_second,
        connections=connections,
        retry=RetryPolicy(
            max_attempts=max_send_attempts,
            initial_wait=min(retry_initial_wait_seconds, retry_max_wait_seconds),
            max_wait=retry_max_wait_seconds,
        ),
        min_price_change=min_price_change,
        lease=dt.timedelta(minutes=pending_lease_minutes),
        max_consecutive_failures=max_consecutive_failures,
    )


def claimant_run_ids(engine: sa.Engine, day: dt.date) -> list[str]:
    """The runs holding `pending` claims for `day` (the caller tells which ones are dead)."""
    with engine.connect() as conn:
        return store_ledger.pending_run_ids(conn, day)


@dataclass
class DeliveryReport:
    considered: int = 0
    sent: int = 0
    skipped_nothing_new: int = 0
    skipped_opted_out: int = 0
    skipped_already_sent: int = 0
    skipped_in_flight: int = 0  # held by a live claim of another delivery when we looked
    skipped_failed_earlier: int = 0  # failed for good in an earlier run of the day
    failed_permanent: int = 0
    failed_transient: int = 0  # retries used up: the next run tries again
    released: int = 0  # claimed but never handed over (the batch stopped)
    not_attempted: int = 0  # had news, left unclaimed because the batch had stopped
    lost_claims: int = 0  # taken over by another delivery before our outcome was recorded
    # Users held by another delivery (or lost to one) and still not settled when this run
    # ended ({user id: the run holding the claim, or ""}): the day is not complete.
    held_elsewhere: dict[int, str] = field(default_factory=dict)
    attempts: int = 0  # messages handed to the transport
    retries: int = 0
    maybe_delivered: int = 0  # connection lost after the data went out (then retried)
    connections_opened: int = 0
    fatal: str | None = None
    stopped: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (email, error), first 20
    preview: str | None = None
    elapsed_s: float = 0.0
    send_window_s: float = 0.0  # first to last handover

    @property
    def failed(self) -> int:
        return self.failed_permanent + self.failed_transient

    @property
    def skipped(self) -> int:
        """Users settled for the day without a message from this run."""
        return (
            self.skipped_nothing_new
            + self.skipped_opted_out
            + self.skipped_already_sent
            + self.skipped_failed_earlier
        )

    @property
    def incomplete(self) -> bool:
        """Users left to a later run (transient failures, released claims, a stop, users
        another delivery held or took over and had not settled by the end of this run)."""
        return bool(
            self.failed_transient
            or self.released
            or self.stopped
            or self.fatal
            or self.held_elsewhere
        )

    def held_summary(self) -> str:
        """One line on the users held by another delivery ("" when none)."""
        if not self.held_elsewhere:
            return ""
        runs = sorted({run for run in self.held_elsewhere.values() if run})
        held_by = f" (held by run {', '.join(runs)})" if runs else ""
        return (
            f"{len(self.held_elsewhere)} users claimed by another delivery were not settled by "
            f"the end of this run{held_by}; a later run sends to them once that claim is "
            "released or its lease expires"
        )

    @property
    def messages_per_second(self) -> float:
        return self.attempts / self.send_window_s if self.send_window_s > 0 else 0.0

    def metadata(self) -> dict:
        return {
            "users_considered": self.considered,
            "sent": self.sent,
            "skipped": self.skipped,
            "skipped_nothing_new": self.skipped_nothing_new,
            "skipped_opted_out": self.skipped_opted_out,
            "skipped_already_sent": self.skipped_already_sent,
            "skipped_in_flight": self.skipped_in_flight,
            "lost_claims": self.lost_claims,
            "held_by_another_delivery": len(self.held_elsewhere),
            "skipped_failed_earlier": self.skipped_failed_earlier,
            "failed": self.failed,
            "failed_permanent": self.failed_permanent,
            "failed_transient": self.failed_transient,
            "released_unsent": self.released,
            "not_attempted": self.not_attempted,
            "send_attempts": self.attempts,
            "send_retries": self.retries,
            "maybe_delivered_then_retried": self.maybe_delivered,
            "connections_opened": self.connections_opened,
            "messages_per_second": round(self.messages_per_second, 2),
            "elapsed_s": round(self.elapsed_s, 2),
        }


@dataclass
class _Job:
    user_id: int
    email: str
    outgoing: OutgoingEmail


class _Stopped(Exception):
    """The batch stopped before this attempt was handed over."""


class _LostClaim(Exception):
    """Another delivery holds the row now."""


class _ContentCache:
    """Per-market facts of the day, shared by every user of the run (loaded once per market),
    and baseline prices per (market, day)."""

    def __init__(self, day: dt.date) -> None:
        self.day = day
        self.states: dict[int, core.MarketState] = {}
        self.forecasts: dict[int, list[core.ModelForecast]] = {}
        self.scores: dict[int, list[core.ModelScore]] = {}
        self.baselines: dict[tuple[int, dt.date], core.PriceAt] = {}
        self._loaded: set[int] = set()
        self._baseline_loaded: set[tuple[int, dt.date]] = set()

    def load(
        self,
        conn: sa.Connection,
        items: dict[int, list[core.WatchItem]],
        previous: dict[int, core.PreviousDigest],
    ) -> None:
        markets = {item.market_id for user_items in items.values() for item in user_items}
        new = sorted(markets - self._loaded)
        if new:
            self.states.update(store_content.market_states(conn, new, self.day))
            self.forecasts.update(store_content.latest_forecasts(conn, new, self.day))
            settled = [m for m in new if m in self.states and self.states[m].status in core.SETTLED]
            self.scores.update(store_content.model_scores(conn, settled))
            self._loaded.update(new)
        wanted: dict[dt.date, set[int]] = {}
        for user_id, user_items in items.items():
            for item in user_items:
                since = core.baseline_day(item, previous.get(user_id))[0]
                if (item.market_id, since) not in self._baseline_loaded:
                    wanted.setdefault(since, set()).add(item.market_id)
        for since, ids in wanted.items():
            prices = store_content.prices_as_of(conn, sorted(ids), since)
            for market_id in ids:
                self._baseline_loaded.add((market_id, since))
                if market_id in prices:
                    self.baselines[(market_id, since)] = prices[market_id]


class DigestDelivery:
    """One delivery of one day's digests (see the module docstring)."""

    def __init__(
        self,
        engine: sa.Engine,
        transport: EmailTransport,
        renderer: core.DigestRenderer,
        day: dt.date,
        settings: DeliverySettings,
        *,
        run_id: str | None = None,
        dead_runs: Collection[str] = (),
        log: logging.Logger | Callable[[str], None] = logger,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.renderer = renderer
        self.day = day
        self.settings = settings
        self.run_id = run_id
        self.dead_runs = frozenset(dead_runs)
        self.token = uuid.uuid4().hex
        self.sender = envelope_address(renderer.sender)
        self.report = DeliveryReport()
        self._info = log.info if isinstance(log, logging.Logger) else log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._jobs: queue.Queue = queue.Queue(
            maxsize=max(settings.chunk_size, settings.connections)
        )
        self._outcomes: queue.Queue = queue.Queue()
        self._pacer = ThreadPacer(settings.max_messages_per_second)
        self._consecutive_failures = 0
        self._first_handover: float | None = None
        self._last_handover: float | None = None
        self._cache = _ContentCache(day)
        self._held: set[int] = set()  # users another delivery held or took over

    # -- the run -----------------------------------------------------------------------

    def run(self) -> DeliveryReport:
        started = time.monotonic()
        senders = [
            threading.Thread(target=self._sender, name=f"digest-sender-{i}", daemon=True)
            for i in range(self.settings.connections)
        ]
        ledger = threading.Thread(target=self._ledger, name="digest-ledger", daemon=True)
        ledger.start()
        for thread in senders:
            thread.start()
        try:
            self._produce()
        except BaseException as exc:
            self._halt(f"delivery aborted: {type(exc).__name__}")
            raise
        finally:
            for _ in senders:
                self._jobs.put(_STOP)
            for thread in senders:
                thread.join()
            self._outcomes.put(_STOP)
            ledger.join()
            self._recheck_held()
            self.report.elapsed_s = time.monotonic() - started
            if self._first_handover is not None and self._last_handover is not None:
                self.report.send_window_s = self._last_handover - self._first_handover
        return self.report

    def _hold(self, user_ids: Collection[int]) -> None:
        with self._lock:
            self._held.update(user_ids)

    def _recheck_held(self) -> None:
        """After the batch, look again at the users another delivery held: those it has
        settled since are done; the rest leave the day incomplete (a later run, or this
        step's retry, takes them over once the claim is released or has expired)."""
        if not self._held:
            return
        try:
            with self.engine.connect() as conn:
                self.report.held_elsewhere = store_ledger.unresolved(conn, self.day, self._held)
        except sa.exc.OperationalError:  # cannot tell: none of them counts as settled
            self.report.held_elsewhere = dict.fromkeys(self._held, "")

    def _halt(self, reason: str, *, fatal: bool = False) -> None:
        with self._lock:
            if fatal and self.report.fatal is None:
                self.report.fatal = reason
            elif not fatal and self.report.stopped is None and self.report.fatal is None:
                self.report.stopped = reason
        self._stop.set()

    # -- producer: read, decide, claim, render, queue ------------------------------------

    def _produce(self) -> None:
        after, chunk_no = 0, 0
        while not self._stop.is_set():
            with self.engine.connect() as conn:
                users = store_content.watching_users(conn, after, self.settings.chunk_size)
            if not users:
                break
            after = users[-1].user_id
            chunk_no += 1
            self._chunk(users)
            if chunk_no % 20 == 0:
                r = self.report
                self._info(
                    f"digests {self.day}: {r.considered} users considered, {r.sent} sent, "
                    f"{r.skipped} skipped, {r.failed} failed so far"
                )

    def _chunk(self, users: Sequence[store_content.DigestUser]) -> None:
        report = self.report
        with self.engine.connect() as conn:
            ledger = store_ledger.deliveries(conn, self.day, [u.user_id for u in users])
            candidates: list[store_content.DigestUser] = []
            for user in users:
                row = ledger.get(user.user_id)
                if row is not None and row.status == store_ledger.SENT:
                    report.skipped_already_sent += 1
                elif (
                    row is not None
                    and row.status == store_ledger.FAILED
                    and row.error_kind == store_ledger.PERMANENT
                ):
                    report.skipped_failed_earlier += 1
                elif not store_ledger.is_claimable(row, self.dead_runs):
                    report.skipped_in_flight += 1
                    self._hold([user.user_id])
                else:
                    candidates.append(user)
            active = [u for u in candidates if u.subscribed]
            ids = [u.user_id for u in active]
            previous = store_ledger.previous_digests(conn, self.day, ids)
            items = store_content.watch_items(conn, ids)
            self._cache.load(conn, items, previous)
        report.considered += len(users)

        skips = {u.user_id: store_ledger.OPTED_OUT for u in candidates if not u.subscribed}
        digests: dict[int, core.Digest] = {}
        cache = self._cache
        for user in active:
            digest = core.build_digest(
                core.Recipient(user.user_id, user.email, user.name),
                self.day,
                previous.get(user.user_id),
                items.get(user.user_id, ()),
                cache.states,
                cache.baselines,
                cache.forecasts,
                cache.scores,
                public_url=self.renderer.public_url,
                min_price_change=self.settings.min_price_change,
            )
            if digest.has_news:
                digests[user.user_id] = digest
            else:
                skips[user.user_id] = store_ledger.NOTHING_NEW
        report.skipped_opted_out += sum(r == store_ledger.OPTED_OUT for r in skips.values())
        report.skipped_nothing_new += sum(r == store_ledger.NOTHING_NEW for r in skips.values())
        if skips:
            with self.engine.begin() as conn:
                written = store_ledger.record_skips(conn, self.day, skips, dead_runs=self.dead_runs)
            # Not written: settled meanwhile, or claimed by another delivery since we looked.
            self._hold(skips.keys() - written)
        if not digests:
            return
        if self._stop.is_set():
            report.not_attempted += len(digests)
            return

        message_ids = {
            uid: core.digest_message_id(uid, self.day, self.renderer.message_id_domain)
            for uid in digests
        }
        with self.engine.begin() as conn:
            claimed = store_ledger.claim(
                conn,
                self.day,
                message_ids,
                token=self.token,
                run_id=self.run_id,
                lease=self.settings.lease,
                dead_runs=self.dead_runs,
            )
        report.skipped_in_flight += len(digests) - len(claimed)  # another delivery won them
        self._hold(digests.keys() - claimed)
        pending = sorted(claimed)
        queued = 0
        try:
            for uid in pending:
                if self._stop.is_set():
                    return
                job = self._render(digests[uid])
                while True:  # a queued job belongs to the senders from here on
                    if self._stop.is_set():
                        return
                    try:
                        self._jobs.put(job, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                queued += 1
        finally:
            if queued < len(pending):  # claimed, never queued: give them back
                reason = self.report.fatal or self.report.stopped or "delivery aborted"
                self._release_now(pending[queued:], reason)

    def _render(self, digest: core.Digest) -> _Job:
        rendered = self.renderer.render(digest)
        message = core.build_message(rendered, digest.recipient, self.renderer.sender)
        if self.report.preview is None:
            self.report.preview = rendered.text.replace(
                rendered.unsubscribe_url,
                f"{self.renderer.public_url.rstrip('/')}/unsubscribe?token=<redacted>",
            )
        user = digest.recipient
        outgoing = OutgoingEmail(self.sender, user.email, rendered.message_id, message.as_bytes())
        return _Job(user.user_id, user.email, outgoing)

    def _release_now(self, user_ids: Sequence[int], reason: str) -> None:
        with self.engine.begin() as conn:
            for uid in user_ids:
                store_ledger.release(conn, self.day, uid, self.token, reason)
        with self._lock:
            self.report.released += len(user_ids)

    # -- senders -------------------------------------------------------------------------

    def _sender(self) -> None:
        session: EmailSession | None = None
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                if self._stop.is_set():
                    self._outcomes.put(("release", job, "batch stopped before sending"))
                    continue
                if session is None:
                    try:
                        session = self.transport.session()
                    except FatalTransportError as exc:
                        self._halt(str(exc), fatal=True)
                        self._outcomes.put(("release", job, str(exc)))
                        continue
                try:
                    outcome = self._send(session, job)
                except Exception as exc:  # a bug or the database: keep the thread alive
                    logger.exception("digest to %s: unexpected error", job.email)
                    outcome = (
                        "failed",
                        job,
                        (store_ledger.TRANSIENT, f"unexpected: {exc!r}"[:500]),
                    )
                self._outcomes.put(outcome)
        finally:
            if session is not None:
                with contextlib.suppress(Exception):
                    session.close()
                with self._lock:
                    self.report.connections_opened += getattr(session, "connections_opened", 0)

    def _send(self, session: EmailSession, job: _Job) -> tuple:
        """One message through the retry policy; returns the outcome for the ledger thread."""
        attempt_no = 0
        unsent_claim = True  # the latest claimed attempt has not been handed over yet
        last_error = ""

        def before_sleep(state) -> None:
            with self._lock:
                self.report.retries += 1

        try:
            retrying = send_retrying(
                self.settings.retry, sleep=self._stop.wait, before_sleep=before_sleep
            )
            for attempt in retrying:
                with attempt:
                    attempt_no += 1
                    if self._stop.is_set() or not self._pacer.wait(self._stop):
                        raise _Stopped()
                    # After the wait, right before the handover: a fresh lease (a claim that
                    # waited in the queue or for the rate limit must not expire mid-send),
                    # and each further attempt is claimed (attempts + 1) before it is sent.
                    with self.engine.begin() as conn:
                        if attempt_no > 1:
                            held = store_ledger.claim_retry(
                                conn,
                                self.day,
                                job.user_id,
                                self.token,
                                last_error,
                                self.settings.lease,
                            )
                        else:
                            held = store_ledger.refresh_claim(
                                conn, self.day, job.user_id, self.token, self.settings.lease
                            )
                    if not held:
                        raise _LostClaim()
                    unsent_claim = False
                    try:
                        provider_id = self._handover(session, job)
                    except TransientSendError as exc:
                        last_error = str(exc)
                        raise
            return ("sent", job, provider_id)
        except _Stopped:
            if unsent_claim:
                return ("release", job, "batch stopped before sending")
            return (
                "failed",
                job,
                (store_ledger.TRANSIENT, f"batch stopped; last error: {last_error}"),
            )
        except _LostClaim:
            return ("lost", job, None)
        except PermanentSendError as exc:
            return ("failed", job, (store_ledger.PERMANENT, str(exc)))
        except TransientSendError as exc:
            return ("failed", job, (store_ledger.TRANSIENT, str(exc)))
        except FatalTransportError as exc:
            self._halt(str(exc), fatal=True)
            return ("failed", job, (store_ledger.TRANSIENT, f"transport unusable: {exc}"))

    def _handover(self, session: EmailSession, job: _Job) -> str:
        now = time.monotonic()
        with self._lock:
            self.report.attempts += 1
            if self._first_handover is None:
                self._first_handover = now
        try:
            provider_id = session.send(job.outgoing)
        except TransientSendError as exc:
            with self._lock:
                self.report.maybe_delivered += exc.maybe_delivered
                self._consecutive_failures += 1
                tripped = self._consecutive_failures >= self.settings.max_consecutive_failures
            if tripped:
                self._halt(
                    f"{self._consecutive_failures} transient send failures in a row, "
                    f"the last: {exc}"
                )
            raise
        with self._lock:
            self._consecutive_failures = 0
            self._last_handover = time.monotonic()
        return provider_id

    # -- ledger thread: group commit of outcomes -----------------------------------------

    def _ledger(self) -> None:
        done = False
        while not done:
            batch = [self._outcomes.get()]
            while len(batch) < _LEDGER_BATCH:
                try:
                    batch.append(self._outcomes.get_nowait())
                except queue.Empty:
                    break
            done = any(item is _STOP for item in batch)
            outcomes = [item for item in batch if item is not _STOP]
            if outcomes:
                self._commit(outcomes)

    def _commit(self, outcomes: list[tuple]) -> None:
        try:
            for attempt in retrying_on(_LEDGER_RETRY, sa.exc.OperationalError):
                with attempt, self.engine.begin() as conn:
                    recorded = [self._record(conn, *outcome) for outcome in outcomes]
        except sa.exc.OperationalError as exc:
            # The claims stay `pending`: the next run re-sends them once they are dead.
            self._halt(f"ledger write failed: {type(exc).__name__}", fatal=True)
            logger.error("digest ledger write failed; %d outcomes lost", len(outcomes))
            return
        results = list(zip(outcomes, recorded, strict=True))
        self._hold([job.user_id for (_, job, _), ok in results if not ok])
        with self._lock:
            r = self.report
            for (kind, job, detail), ok in results:
                if not ok:
                    r.lost_claims += 1
                    if kind == "sent":
                        # Handed over, but another delivery had taken the row over (our lease
                        # ran out mid-send): not ours to count; that delivery settles the user.
                        logger.warning(
                            "digest %s to %s: sent, but another delivery had taken the claim "
                            "over; not counted as sent by this run",
                            self.day,
                            job.email,
                        )
                elif kind == "sent":
                    r.sent += 1
                elif kind == "failed":
                    if detail[0] == store_ledger.PERMANENT:
                        r.failed_permanent += 1
                    else:
                        r.failed_transient += 1
                    if len(r.failures) < 20:
                        r.failures.append((job.email, detail[1]))
                elif kind == "release":
                    r.released += 1

    def _record(self, conn: sa.Connection, kind: str, job: _Job, detail) -> bool:
        """Write one outcome; False if the claim is no longer ours (nothing is written)."""
        if kind == "sent":
            return store_ledger.mark_sent(conn, self.day, job.user_id, self.token, detail)
        if kind == "failed":
            error_kind, error = detail
            return store_ledger.mark_failed(
                conn, self.day, job.user_id, self.token, error_kind, error
            )
        if kind == "release":
            return store_ledger.release(conn, self.day, job.user_id, self.token, detail)
        return False  # "lost": found out before the send


def deliver_digests(
    engine: sa.Engine,
    transport: EmailTransport,
    renderer: core.DigestRenderer,
    day: dt.date,
    settings: DeliverySettings | None = None,
    **kwargs,
) -> DeliveryReport:
    """Send `day`'s digests (see the module docstring); returns what happened."""
    return DigestDelivery(
        engine, transport, renderer, day, settings or DeliverySettings(), **kwargs
    ).run()
