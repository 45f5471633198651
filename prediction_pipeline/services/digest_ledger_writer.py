"""The ledger thread of one digest delivery: writes the senders' outcomes back to
`digest_deliveries` by group commit (whatever finished since the last commit goes into the next
transaction), each write fenced by the delivery's claim token (see services.digest_delivery)."""

from __future__ import annotations

import logging
import queue

import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import RetryPolicy, retrying_on
from prediction_pipeline.services.digest_building import DigestJob
from prediction_pipeline.services.digest_delivery_state import STOP, DeliveryState
from prediction_pipeline.store import digest_ledger as store_ledger

logger = logging.getLogger(__name__)

LEDGER_BATCH = 500  # outcomes per ledger transaction at most
# A ledger commit that hits a locked or dropped database: 3 attempts, 0.5 s then 1 s apart.
LEDGER_RETRY = RetryPolicy(max_attempts=3, initial_wait=0.5, max_wait=2.0, jitter="none")


class LedgerWriter:
    def __init__(self, state: DeliveryState, outcomes: queue.Queue) -> None:
        self.state = state
        self.outcomes = outcomes

    def run(self) -> None:
        """The ledger thread: commit outcomes in groups until STOP."""
        done = False
        while not done:
            batch = [self.outcomes.get()]
            while len(batch) < LEDGER_BATCH:
                try:
                    batch.append(self.outcomes.get_nowait())
                except queue.Empty:
                    break
            done = any(item is STOP for item in batch)
            outcomes = [item for item in batch if item is not STOP]
            if outcomes:
                self._commit(outcomes)

    def _commit(self, outcomes: list[tuple]) -> None:
        try:
            for attempt in retrying_on(LEDGER_RETRY, sa.exc.OperationalError):
                with attempt, self.state.engine.begin() as conn:
                    recorded = [self._record(conn, *outcome) for outcome in outcomes]
        except sa.exc.OperationalError as exc:
            # The claims stay `pending`: the next run re-sends them once they are dead.
            self.state.halt(f"ledger write failed: {type(exc).__name__}", fatal=True)
            logger.error("digest ledger write failed; %d outcomes lost", len(outcomes))
            return
        results = list(zip(outcomes, recorded, strict=True))
        self.state.hold([job.user_id for (_, job, _), ok in results if not ok])
        with self.state.lock:
            r = self.state.report
            for (kind, job, detail), ok in results:
                if not ok:
                    r.lost_claims += 1
                    if kind == "sent":
                        # Handed over, but another delivery had taken the row over (our lease
                        # ran out mid-send): not ours to count; that delivery settles the user.
                        logger.warning(
                            "digest %s to %s: sent, but another delivery had taken the claim "
                            "over; not counted as sent by this run",
                            self.state.day,
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

    def _record(self, conn: sa.Connection, kind: str, job: DigestJob, detail) -> bool:
        """Write one outcome; False if the claim is no longer ours (nothing is written)."""
        if kind == "sent":
            return store_ledger.mark_sent(
                conn, self.state.day, job.user_id, self.state.token, detail
            )
        if kind == "failed":
            error_kind, error = detail
            return store_ledger.mark_failed(
                conn, self.state.day, job.user_id, self.state.token, error_kind, error
            )
        if kind == "release":
            return store_ledger.release(conn, self.state.day, job.user_id, self.state.token, detail)
        return False  # "lost": found out before the send
