"""Run-failure alerts to a webhook: at least once, bounded, and never leaking its URL.

An alert is a row of `run_failure_alerts` first (the failure sensor records it once per run),
then a webhook POST (Slack-style `{"text": ...}` plus details). A POST that fails leaves the
row undelivered with the reason; `retry_undelivered` tries again on later sensor ticks, with
a growing pause between attempts, at most `MAX_ALERT_ATTEMPTS` times in all. The webhook URL's
path is its secret: it appears in no log line, error or row (`redact_url`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import (
    RetryableHTTPError,
    RetryPolicy,
    describe_error,
    redact_url,
    register_secret_url,
    send_with_retry,
)
from prediction_pipeline.store import on_demand as store

MAX_ALERT_ATTEMPTS = 6
#: Pause before the n-th retry: RETRY_BASE * 2**(n-1): 1, 2, 4, 8, 16 minutes.
RETRY_BASE = dt.timedelta(minutes=1)
#: Within one attempt, a few quick HTTP retries for blips (429, 5xx, dropped connections).
WEBHOOK_POLICY = RetryPolicy(max_attempts=3, initial_wait=0.5, max_wait=5, secret_url=True)
WEBHOOK_TIMEOUT_SECONDS = 10.0


class AlertDeliveryError(Exception):
    """The webhook did not take the alert; the message names only the webhook's host."""


@dataclass(frozen=True)
class Alert:
    id: int
    run_id: str
    job_name: str
    partition_key: str | None
    error: str
    run_url: str

    @classmethod
    def from_row(cls, row: sa.Row) -> Alert:
        return cls(row.id, row.run_id, row.job_name, row.partition_key, row.error, row.run_url)

    @property
    def text(self) -> str:
        head = f"Run failed: {self.job_name} {self.partition_key or ''} {self.run_url}"
        return f"{head}\n{self.error[:1500]}"

    def payload(self) -> dict:
        return {
            "text": self.text,
            "run_id": self.run_id,
            "job": self.job_name,
            "partition": self.partition_key,
            "error": self.error[:4000],
            "url": self.run_url,
        }


def post_webhook(
    url: str,
    payload: dict,
    *,
    policy: RetryPolicy = WEBHOOK_POLICY,
    sleep: Callable[[float], None] | None = None,
) -> None:
    """POST `payload` as JSON; raises `AlertDeliveryError` (URL redacted) unless a 2xx comes
    back within the policy's attempts."""
    register_secret_url(url)
    try:
        with httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS) as client:
            response = send_with_retry(
                client, "POST", url, policy=policy, sleep=sleep, json=payload
            )
    except (httpx.HTTPError, RetryableHTTPError, ValueError) as exc:
        # httpx errors may embed the full URL: only a redacted account leaves this function.
        raise AlertDeliveryError(describe_error(exc, url)) from None
    if not response.is_success:
        raise AlertDeliveryError(f"POST {redact_url(url)}: HTTP {response.status_code}")


def deliver(
    engine: sa.Engine,
    alert: Alert,
    url: str,
    *,
    seen_attempts: int,
    log: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> bool | None:
    """One delivery attempt of `alert`: True when delivered, False when it failed (the row
    keeps the reason), None when another sensor claimed this attempt first."""
    with engine.begin() as conn:
        if not store.claim_alert_delivery(conn, alert.id, seen_attempts=seen_attempts):
            return None
    try:
        post_webhook(url, alert.payload(), sleep=sleep)
    except AlertDeliveryError as exc:
        with engine.begin() as conn:
            store.finish_alert_delivery(conn, alert.id, error=str(exc))
        if log:
            attempt = seen_attempts + 1
            more = "retried later" if attempt < MAX_ALERT_ATTEMPTS else "giving up"
            log(
                f"alert for run {alert.run_id}: webhook attempt {attempt}/"
                f"{MAX_ALERT_ATTEMPTS} failed ({exc}); {more}"
            )
        return False
    with engine.begin() as conn:
        store.finish_alert_delivery(conn, alert.id, error=None)
    return True


def is_due(row: sa.Row, now: dt.datetime) -> bool:
    """Never tried, or its pause after the last attempt is over."""
    last = row.last_attempt_at
    if last is None:
        return True
    if last.tzinfo is None:  # SQLite hands back naive datetimes; they are stored in UTC
        last = last.replace(tzinfo=dt.UTC)
    return now >= last + RETRY_BASE * 2 ** max(row.attempts - 1, 0)


def retry_undelivered(
    engine: sa.Engine,
    url: str,
    now: dt.datetime,
    *,
    log: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> dict[str, int]:
    """Try again every undelivered alert that is due; counts of what happened."""
    counts = {"delivered": 0, "failed": 0, "waiting": 0, "claimed_elsewhere": 0}
    with engine.connect() as conn:
        rows = store.undelivered_alerts(conn, max_attempts=MAX_ALERT_ATTEMPTS)
    for row in rows:
        if not is_due(row, now):
            counts["waiting"] += 1
            continue
        outcome = deliver(
            engine, Alert.from_row(row), url, seen_attempts=row.attempts, log=log, sleep=sleep
        )
        key = {True: "delivered", False: "failed", None: "claimed_elsewhere"}[outcome]
        counts[key] += 1
    return counts
