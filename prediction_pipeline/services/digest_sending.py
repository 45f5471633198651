"""The sender threads of one digest delivery: each takes rendered messages from the queue,
paces them (one rate over all threads), renews the claim right before the handover, retries
transient failures, and hands the outcome to the ledger thread (see services.digest_delivery)."""

from __future__ import annotations

import contextlib
import logging
import queue
import time

from prediction_pipeline.clients.email import (
    EmailSession,
    EmailTransport,
    FatalTransportError,
    PermanentSendError,
    TransientSendError,
    send_retrying,
)
from prediction_pipeline.clients.rate_limit import ThreadPacer
from prediction_pipeline.services.digest_building import DigestJob
from prediction_pipeline.services.digest_delivery_state import STOP, DeliveryState
from prediction_pipeline.store import digest_ledger as store_ledger

logger = logging.getLogger(__name__)


class _Stopped(Exception):
    """The batch stopped before this attempt was handed over."""


class _LostClaim(Exception):
    """Another delivery holds the row now."""


def _session_failure(exc: Exception) -> str:
    if isinstance(exc, FatalTransportError):
        return str(exc)
    logger.exception("opening an email session failed unexpectedly")
    return f"cannot open an email session: {exc!r}"[:500]


class DigestSenders:
    """Shared by the sender threads of one delivery (each runs `run`): the pacer, the count of
    transient failures in a row, the first and last handover."""

    def __init__(
        self,
        state: DeliveryState,
        transport: EmailTransport,
        jobs: queue.Queue,
        outcomes: queue.Queue,
    ) -> None:
        self.state = state
        self.transport = transport
        self.jobs = jobs
        self.outcomes = outcomes
        self._pacer = ThreadPacer(state.settings.max_messages_per_second)
        self._consecutive_failures = 0
        self.first_handover: float | None = None
        self.last_handover: float | None = None

    def run(self) -> None:
        """One sender thread: take jobs until STOP, send each on its own connection."""
        session: EmailSession | None = None
        try:
            while True:
                job = self.jobs.get()
                if job is STOP:
                    return
                if self.state.stop.is_set():
                    self.outcomes.put(("release", job, "batch stopped before sending"))
                    continue
                if session is None:
                    try:
                        session = self.transport.session()
                    except Exception as exc:
                        # Fatal, or anything else (a bug in a transport): without a session
                        # this thread cannot send, so the batch halts and the claim goes back.
                        # Letting it escape would end the thread and leave the delivery
                        # waiting for outcomes that never come.
                        reason = _session_failure(exc)
                        self.state.halt(reason, fatal=True)
                        self.outcomes.put(("release", job, reason))
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
                self.outcomes.put(outcome)
        finally:
            if session is not None:
                with contextlib.suppress(Exception):
                    session.close()
                with self.state.lock:
                    self.state.report.connections_opened += getattr(
                        session, "connections_opened", 0
                    )

    def _send(self, session: EmailSession, job: DigestJob) -> tuple:
        """One message through the retry policy; returns the outcome for the ledger thread."""
        attempt_no = 0
        unsent_claim = True  # the latest claimed attempt has not been handed over yet
        last_error = ""

        def before_sleep(state) -> None:
            with self.state.lock:
                self.state.report.retries += 1

        try:
            retrying = send_retrying(
                self.state.settings.retry, sleep=self.state.stop.wait, before_sleep=before_sleep
            )
            for attempt in retrying:
                with attempt:
                    attempt_no += 1
                    if self.state.stop.is_set() or not self._pacer.wait(self.state.stop):
                        raise _Stopped()
                    if not self._hold_claim(job, attempt_no, last_error):
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
            self.state.halt(str(exc), fatal=True)
            return ("failed", job, (store_ledger.TRANSIENT, f"transport unusable: {exc}"))

    def _hold_claim(self, job: DigestJob, attempt_no: int, last_error: str) -> bool:
        """Called after the wait, right before the handover: a fresh lease (a claim that
        waited in the queue or for the rate limit must not expire mid-send), and each further
        attempt is claimed (attempts + 1) before it is sent. False: the claim was lost."""
        with self.state.engine.begin() as conn:
            if attempt_no > 1:
                return store_ledger.claim_retry(
                    conn,
                    self.state.day,
                    job.user_id,
                    self.state.token,
                    last_error,
                    self.state.settings.lease,
                )
            return store_ledger.refresh_claim(
                conn,
                self.state.day,
                job.user_id,
                self.state.token,
                self.state.settings.lease,
            )

    def _handover(self, session: EmailSession, job: DigestJob) -> str:
        now = time.monotonic()
        with self.state.lock:
            self.state.report.attempts += 1
            if self.first_handover is None:
                self.first_handover = now
        try:
            provider_id = session.send(job.outgoing)
        except TransientSendError as exc:
            with self.state.lock:
                self.state.report.maybe_delivered += exc.maybe_delivered
                self._consecutive_failures += 1
                tripped = self._consecutive_failures >= self.state.settings.max_consecutive_failures
            if tripped:
                self.state.halt(
                    f"{self._consecutive_failures} transient send failures in a row, "
                    f"the last: {exc}"
                )
            raise
        with self.state.lock:
            self._consecutive_failures = 0
            self.last_handover = time.monotonic()
        return provider_id
