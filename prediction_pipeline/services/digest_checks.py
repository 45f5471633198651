"""Data-quality counts of one day of the digest ledger, behind the digest asset checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store import digest_ledger_checks


@dataclass(frozen=True)
class LedgerHealth:
    users_with_two_sent: int  # users with more than one `sent` row for the day
    unique_constraint: bool  # the database holds UNIQUE(user_id, day) on the ledger
    sent: int
    pending: int
    pending_past_lease: int  # `pending` rows of a dead delivery, retried by the next run


def ledger_health(conn: sa.Connection, day: dt.date) -> LedgerHealth:
    duplicates = digest_ledger_checks.duplicate_sent(conn, day)
    unique = digest_ledger_checks.ledger_is_unique_per_user_and_day(conn)
    counts = digest_ledger_checks.status_counts(conn, day)
    stale = digest_ledger_checks.stale_pending(conn, day)
    return LedgerHealth(
        users_with_two_sent=duplicates,
        unique_constraint=unique,
        sent=counts[digest_ledger_checks.SENT],
        pending=counts[digest_ledger_checks.PENDING],
        pending_past_lease=stale,
    )
