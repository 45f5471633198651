"""Run-failure alerts to a webhook: at least once, bounded, and never leaking its URL.

An alert is a row of `run_failure_alerts` first (`report_run_failure` records it once per
run), then a webhook POST (Slack-style `{"text": ...}` plus details) through
`clients.webhook`. A POST that fails leaves the row undelivered with the reason;
`retry_undelivered` tries again on later sensor ticks, with a growing pause between attempts,
at most `MAX_ALERT_ATTEMPTS` times in all. The webhook URL's path is its secret: it appears in
no log line, error or row (the client redacts it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.clients.webhook import WebhookClient, WebhookDeliveryError
from prediction_pipeline.store import alerts as alert_store

MAX_ALERT_ATTEMPTS = 6
#: Pause before the n-th retry: RETRY_BASE * 2**(n-1): 1, 2, 4, 8, 16 minutes.
RETRY_BASE = dt.timedelta(minutes=1)


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


def report_run_failure(
    engine: sa.Engine,
    *,
    run_id: str,
    job_name: str,
    partition_key: str | None,
    error: str,
    run_url: str,
    webhook: WebhookClient | None,
    log_error: Callable[[str], None] | None = None,
    log_warning: Callable[[str], None] | None = None,
) -> Alert | None:
    """Record the failed run's alert (once per run), log it, and POST it to the webhook when
    one is configured. None when the run's alert was already recorded (a second tick)."""
    channels = ["log"] + (["webhook"] if webhook else [])
    with engine.begin() as conn:
        alert_id = alert_store.record_alert(
            conn,
            run_id=run_id,
            job_name=job_name,
            partition_key=partition_key,
            error=error,
            run_url=run_url,
            notified_via=",".join(channels),
            deliver=webhook is not None,
        )
    if alert_id is None:
        return None
    alert = Alert(alert_id, run_id, job_name, partition_key, error, run_url)
    if log_error:
        log_error(alert.text)
    if webhook:
        deliver(engine, alert, webhook, seen_attempts=0, log=log_warning)
    return alert


def deliver(
    engine: sa.Engine,
    alert: Alert,
    webhook: WebhookClient,
    *,
    seen_attempts: int,
    log: Callable[[str], None] | None = None,
) -> bool | None:
    """One delivery attempt of `alert`: True when delivered, False when it failed (the row
    keeps the reason), None when another sensor claimed this attempt first."""
    with engine.begin() as conn:
        if not alert_store.claim_alert_delivery(conn, alert.id, seen_attempts=seen_attempts):
            return None
    try:
        webhook.post(alert.payload())
    except WebhookDeliveryError as exc:
        with engine.begin() as conn:
            alert_store.finish_alert_delivery(conn, alert.id, error=str(exc))
        if log:
            attempt = seen_attempts + 1
            more = "retried later" if attempt < MAX_ALERT_ATTEMPTS else "giving up"
            log(
                f"alert for run {alert.run_id}: webhook attempt {attempt}/"
                f"{MAX_ALERT_ATTEMPTS} failed ({exc}); {more}"
            )
        return False
    with engine.begin() as conn:
        alert_store.finish_alert_delivery(conn, alert.id, error=None)
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
    webhook: WebhookClient,
    now: dt.datetime,
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Try again every undelivered alert that is due; counts of what happened."""
    counts = {"delivered": 0, "failed": 0, "waiting": 0, "claimed_elsewhere": 0}
    with engine.connect() as conn:
        rows = alert_store.undelivered_alerts(conn, max_attempts=MAX_ALERT_ATTEMPTS)
    for row in rows:
        if not is_due(row, now):
            counts["waiting"] += 1
            continue
        outcome = deliver(engine, Alert.from_row(row), webhook, seen_attempts=row.attempts, log=log)
        key = {True: "delivered", False: "failed", None: "claimed_elsewhere"}[outcome]
        counts[key] += 1
    return counts
