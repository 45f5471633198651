"""Checks on each day of `watchlist_digests`, evaluated in the same step."""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from prediction_pipeline.services.digest_checks import ledger_health

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
    health = ledger_health(conn, day)
    return [
        dg.AssetCheckResult(
            check_name="one_digest_per_user_and_day",
            passed=health.users_with_two_sent == 0 and health.unique_constraint,
            metadata={
                "users_with_two_sent": health.users_with_two_sent,
                "unique_constraint": health.unique_constraint,
                "sent_rows": health.sent,
            },
        ),
        dg.AssetCheckResult(
            check_name="no_digest_left_pending",
            passed=health.pending == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"pending": health.pending, "pending_past_lease": health.pending_past_lease},
        ),
    ]
