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
3. `connections` sender threads (services.digest_sending), each with its own SMTP connection
   (or outbox session), take messages from the queue at no more than `max_messages_per_second`
   in all (`clients.rate_limit.ThreadPacer`: monotonic pacing, no bursts), and retry transient
   failures under the shared retry policy (`clients.http_retry.retrying_on`: exponential
   backoff with jitter; the ledger thread's commits retry through it too). After the
   pacing wait and right before each handover the claim gets a fresh lease (one committed
   update; a further attempt also counts `attempts + 1`), so the whole lease covers the send
   and the ledger counts what was handed to the transport. If the claim is no longer ours, the
   message is not sent. Permanent rejections (SMTP 5xx) are final: one attempt, `failed`.
4. Outcomes are written back by one ledger thread (services.digest_ledger_writer; group
   commit: whatever finished since its last commit goes into the next transaction): `sent`
   with the provider's id, `failed` with the error and its kind, or *released* (claimed but
   never handed over: the batch stopped).
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

import datetime as dt
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence

import sqlalchemy as sa

from prediction_pipeline.clients.email import EmailTransport, envelope_address
from prediction_pipeline.core import digests as core
from prediction_pipeline.services.digest_building import (
    DigestContentCache,
    build_digests,
    redacted_preview,
    render_job,
)
from prediction_pipeline.services.digest_delivery_state import STOP, DeliveryState
from prediction_pipeline.services.digest_ledger_writer import LedgerWriter
from prediction_pipeline.services.digest_report import DeliveryReport
from prediction_pipeline.services.digest_sending import DigestSenders
from prediction_pipeline.services.digest_settings import DeliverySettings
from prediction_pipeline.store import digest_content as store_content
from prediction_pipeline.store import digest_ledger as store_ledger

logger = logging.getLogger(__name__)


class DigestDelivery:
    """One delivery of one day's digests (see the module docstring): this thread reads,
    decides, claims, renders and queues; `connections` sender threads send
    (services.digest_sending); one ledger thread records the outcomes
    (services.digest_ledger_writer)."""

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
        self.state = DeliveryState(
            engine,
            day,
            settings,
            token=uuid.uuid4().hex,
            run_id=run_id,
            dead_runs=frozenset(dead_runs),
        )
        self.engine, self.day, self.settings = engine, day, settings
        self.report = self.state.report
        self.renderer = renderer
        self.sender = envelope_address(renderer.sender)
        self._info = log.info if isinstance(log, logging.Logger) else log
        self._jobs: queue.Queue = queue.Queue(
            maxsize=max(settings.chunk_size, settings.connections)
        )
        outcomes: queue.Queue = queue.Queue()
        self._senders = DigestSenders(self.state, transport, self._jobs, outcomes)
        self._ledger = LedgerWriter(self.state, outcomes)
        self._cache = DigestContentCache(day)

    def run(self) -> DeliveryReport:
        started = time.monotonic()
        senders = [
            threading.Thread(target=self._senders.run, name=f"digest-sender-{i}", daemon=True)
            for i in range(self.settings.connections)
        ]
        ledger = threading.Thread(target=self._ledger.run, name="digest-ledger", daemon=True)
        ledger.start()
        for thread in senders:
            thread.start()
        try:
            self._produce()
        except BaseException as exc:
            self.state.halt(f"delivery aborted: {type(exc).__name__}")
            raise
        finally:
            for _ in senders:
                self._jobs.put(STOP)
            for thread in senders:
                thread.join()
            self._ledger.outcomes.put(STOP)
            ledger.join()
            self._recheck_held()
            self.report.elapsed_s = time.monotonic() - started
            first, last = self._senders.first_handover, self._senders.last_handover
            if first is not None and last is not None:
                self.report.send_window_s = last - first
        return self.report

    def _recheck_held(self) -> None:
        """After the batch, look again at the users another delivery held: those it has
        settled since are done; the rest leave the day incomplete (a later run, or this
        step's retry, takes them over once the claim is released or has expired)."""
        if not self.state.held:
            return
        try:
            with self.engine.connect() as conn:
                self.report.held_elsewhere = store_ledger.unresolved(
                    conn, self.day, self.state.held
                )
        except sa.exc.OperationalError:  # cannot tell: none of them counts as settled
            self.report.held_elsewhere = dict.fromkeys(self.state.held, "")

    def _produce(self) -> None:
        after, chunk_no = 0, 0
        while not self.state.stop.is_set():
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
            candidates = self._candidates(conn, users)
            active = [u for u in candidates if u.subscribed]
            ids = [u.user_id for u in active]
            previous = store_ledger.previous_digests(conn, self.day, ids)
            items = store_content.watch_items(conn, ids)
            self._cache.load(conn, items, previous)
        report.considered += len(users)

        skips = {u.user_id: store_ledger.OPTED_OUT for u in candidates if not u.subscribed}
        digests, nothing_new = build_digests(
            active,
            self.day,
            previous,
            items,
            self._cache,
            public_url=self.renderer.public_url,
            min_price_change=self.settings.min_price_change,
        )
        skips.update(dict.fromkeys(nothing_new, store_ledger.NOTHING_NEW))
        self._record_skips(skips)
        if not digests:
            return
        if self.state.stop.is_set():
            report.not_attempted += len(digests)
            return
        self._claim_and_queue(digests)

    def _candidates(
        self, conn: sa.Connection, users: Sequence[store_content.DigestUser]
    ) -> list[store_content.DigestUser]:
        """The users of the chunk this delivery may still send to (or skip): not sent, not
        rejected for good, not held by another live delivery. Counts the others."""
        report = self.report
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
            elif not store_ledger.is_claimable(row, self.state.dead_runs):
                report.skipped_in_flight += 1
                self.state.hold([user.user_id])
            else:
                candidates.append(user)
        return candidates

    def _record_skips(self, skips: dict[int, str]) -> None:
        report = self.report
        report.skipped_opted_out += sum(r == store_ledger.OPTED_OUT for r in skips.values())
        report.skipped_nothing_new += sum(r == store_ledger.NOTHING_NEW for r in skips.values())
        if skips:
            with self.engine.begin() as conn:
                written = store_ledger.record_skips(
                    conn, self.day, skips, dead_runs=self.state.dead_runs
                )
            # Not written: settled meanwhile, or claimed by another delivery since we looked.
            self.state.hold(skips.keys() - written)

    def _claim_and_queue(self, digests: dict[int, core.Digest]) -> None:
        """Claim the users' ledger rows, then hand their messages to the senders; whatever
        was claimed and not queued is released at once."""
        report = self.report
        message_ids = {
            uid: core.digest_message_id(uid, self.day, self.renderer.message_id_domain)
            for uid in digests
        }
        with self.engine.begin() as conn:
            claimed = store_ledger.claim(
                conn,
                self.day,
                message_ids,
                token=self.state.token,
                run_id=self.state.run_id,
                lease=self.settings.lease,
                dead_runs=self.state.dead_runs,
            )
        report.skipped_in_flight += len(digests) - len(claimed)  # another delivery won them
        self.state.hold(digests.keys() - claimed)
        pending = sorted(claimed)
        queued = 0
        try:
            for uid in pending:
                if self.state.stop.is_set():
                    return
                job, rendered = render_job(self.renderer, digests[uid], self.sender)
                if self.report.preview is None:
                    self.report.preview = redacted_preview(self.renderer, rendered)
                while True:  # a queued job belongs to the senders from here on
                    if self.state.stop.is_set():
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

    def _release_now(self, user_ids: Sequence[int], reason: str) -> None:
        with self.engine.begin() as conn:
            for uid in user_ids:
                store_ledger.release(conn, self.day, uid, self.state.token, reason)
        with self.state.lock:
            self.report.released += len(user_ids)


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


def claimant_run_ids(engine: sa.Engine, day: dt.date) -> list[str]:
    """The runs holding `pending` claims for `day` (the caller tells which ones are dead)."""
    with engine.connect() as conn:
        return store_ledger.pending_run_ids(conn, day)
