"""Run-failure alerts: one row per failed run, and the delivery of its webhook."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import run_failure_alerts


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def record_alert(
    conn: sa.Connection,
    *,
    run_id: str,
    job_name: str,
    partition_key: str | None,
    error: str,
    run_url: str,
    notified_via: str,
    deliver: bool = False,
) -> int | None:
    """The new alert's id when this run's failure is recorded for the first time, else None.
    `deliver`: a webhook is to be sent (the row stays undelivered until it is); without
    one, there is nothing to deliver beyond the row and the log."""
    now = _now()
    insert = dialect_insert(conn, run_failure_alerts).on_conflict_do_nothing(
        index_elements=["run_id"]
    )
    result = conn.execute(
        insert.returning(run_failure_alerts.c.id),
        {
            "run_id": run_id,
            "job_name": job_name,
            "partition_key": partition_key,
            "error": error[:4000],
            "run_url": run_url,
            "notified_via": notified_via,
            "created_at": now,
            "delivered_at": None if deliver else now,
        },
    )
    return result.scalar()


def undelivered_alerts(conn: sa.Connection, *, max_attempts: int, limit: int = 50) -> list[sa.Row]:
    """Alerts whose webhook is still to be sent and that have attempts left, oldest first."""
    t = run_failure_alerts
    query = (
        sa.select(t)
        .where(t.c.delivered_at.is_(None), t.c.attempts < max_attempts)
        .order_by(t.c.id)
        .limit(limit)
    )
    return list(conn.execute(query))


def claim_alert_delivery(conn: sa.Connection, alert_id: int, *, seen_attempts: int) -> bool:
    """Count one delivery attempt, if nobody else did since `seen_attempts` was read: of two
    sensors that see the same undelivered alert, only one sends it."""
    t = run_failure_alerts
    result = conn.execute(
        sa.update(t)
        .where(t.c.id == alert_id, t.c.delivered_at.is_(None), t.c.attempts == seen_attempts)
        .values(attempts=t.c.attempts + 1, last_attempt_at=_now())
    )
    return result.rowcount == 1


def finish_alert_delivery(conn: sa.Connection, alert_id: int, *, error: str | None) -> None:
    """Delivered (error None), or still undelivered with the (redacted) reason."""
    t = run_failure_alerts
    values = (
        {"delivered_at": _now(), "last_error": None}
        if error is None
        else {"last_error": error[:1000]}
    )
    conn.execute(sa.update(t).where(t.c.id == alert_id).values(**values))


def alerts(conn: sa.Connection, limit: int = 50) -> list[sa.Row]:
    query = sa.select(run_failure_alerts).order_by(run_failure_alerts.c.id.desc()).limit(limit)
    return list(conn.execute(query))
