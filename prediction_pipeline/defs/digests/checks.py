"""Checks on each day of `watchlist_digests`, evaluated in the same step."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from prediction_pipeline.store import digest_ledger_checks

CHECK_SPECS = [
    dg.AssetCheckSpec(
        "one_digest_per_user_and_day",
        asset="watchlist_digests",
        description="No user has two sent digests for the day, and the ledger's "
        "UNIQUE(user_id, day) constraint is in place.",
    ),
    dg.AssetCheckSpec(
        "no_digest_left_pending",
        asset="watchlist_digests",
        description="No ledger row of the day is left `pending` by a dead delivery (WARN: "
        "the next run re-sends it once its claim has expired).",
    ),
]


def evaluate_checks(conn: sa.Connection, day: dt.date) -> list[dg.AssetCheckResult]:
    duplicates = digest_ledger_checks.duplicate_sent(conn, day)
    unique = digest_ledger_checks.ledger_is_unique_per_user_and_day(conn)
    counts = digest_ledger_checks.status_counts(conn, day)
    stale = digest_ledger_checks.stale_pending(conn, day)
    return [
        dg.AssetCheckResult(
            check_name="one_digest_per_user_and_day",
            passed=duplicates == 0 and unique,
            metadata={
                "users_with_two_sent": duplicates,
                "unique_constraint": unique,
                "sent_rows": counts["sent"],
            },
        ),
        dg.AssetCheckResult(
            check_name="no_digest_left_pending",
            passed=counts["pending"] == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"pending": counts["pending"], "pending_past_lease": stale},
        ),
    ]
