"""Recovery of on-demand work whose run died: requeue it, or fail it with a refund.

A request or session whose run failed, was canceled, was lost, or was killed by run monitoring
after hanging is put back in the queue (its sensor launches a new run), at most
`MAX_LAUNCHES` launches in all; then it fails, refunded. Never charges twice (debits happen
once, at creation) and never duplicates a prediction (requests and (session, model) pairs are
unique in `predictions`).

What the orchestrator knows about runs comes in through `last_run`, so this module needs no
Dagster: the recovery sensor passes a lookup over the Dagster instance's runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store import queue_items, queue_recovery
from prediction_pipeline.store import requests as request_store
from prediction_pipeline.store import sessions as session_store

MAX_LAUNCHES = 3  # a request or session whose runs died this many times fails, refunded
RECOVERY_GRACE_SECONDS = 120  # leave young rows to their sensor and run
REQUEST, SESSION = "request", "session"


@dataclass(frozen=True)
class LastRun:
    """The newest run launched for a request or session, as the orchestrator sees it."""

    run_id: str
    status: str  # e.g. "FAILURE", "CANCELED"
    alive: bool  # queued, starting, started or canceling: leave it alone


# (kind, item id) -> its newest run, or None when none was launched.
LastRunLookup = Callable[[str, str], LastRun | None]


def recover_dead_work(
    engine: sa.Engine,
    last_run: LastRunLookup,
    now: dt.datetime,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Requeue requests and sessions whose run died, or fail them with a refund after
    MAX_LAUNCHES launches; counts of what happened."""
    counts = {"requeued": 0, "failed": 0, "alive": 0}
    with engine.connect() as conn:
        items = queue_recovery.unfinished_items(conn)
    for kind, item_id, status, updated_at, launches in items:
        if (now - updated_at).total_seconds() < RECOVERY_GRACE_SECONDS:
            continue
        run = last_run(kind, item_id)
        if run is not None and run.alive:
            counts["alive"] += 1
            continue
        if run is None and status == queue_items.QUEUED:
            continue  # not launched yet: its sensor will (or is turned off)
        reason = f"run {run.run_id} ended {run.status}" if run else "no run found"
        with engine.begin() as conn:
            if launches + 1 < MAX_LAUNCHES:
                # False when it finished since `items` was read: nothing to recover.
                counts["requeued"] += queue_recovery.requeue(conn, kind, item_id)
            elif kind == REQUEST:
                request_store.finish_request(
                    conn, item_id, prediction_id=None, error=f"gave up: {reason}"
                )
                counts["failed"] += 1
            else:
                session_store.fail_session(conn, item_id, f"gave up: {reason}")
                counts["failed"] += 1
        if log:
            log(f"{kind} {item_id}: {reason}; launches={launches + 1}")
    return counts
