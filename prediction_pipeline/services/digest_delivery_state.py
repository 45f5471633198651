"""What the producer, the sender threads and the ledger thread of one digest delivery share:
the report, one lock over it, the stop signal and the users another delivery holds."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Collection

import sqlalchemy as sa

from prediction_pipeline.services.digest_report import DeliveryReport
from prediction_pipeline.services.digest_settings import DeliverySettings

STOP = object()  # sentinel for the job and outcome queues


class DeliveryState:
    def __init__(
        self,
        engine: sa.Engine,
        day: dt.date,
        settings: DeliverySettings,
        *,
        token: str,
        run_id: str | None,
        dead_runs: frozenset[str],
    ) -> None:
        self.engine = engine
        self.day = day
        self.settings = settings
        self.token = token  # this delivery's claim token (fences every ledger write)
        self.run_id = run_id
        self.dead_runs = dead_runs
        self.report = DeliveryReport()
        self.lock = threading.Lock()  # over the report and the counters of the threads
        self.stop = threading.Event()
        self.held: set[int] = set()  # users another delivery held or took over

    def hold(self, user_ids: Collection[int]) -> None:
        with self.lock:
            self.held.update(user_ids)

    def halt(self, reason: str, *, fatal: bool = False) -> None:
        """Stop the batch: the first fatal reason, or the first reason to stop, is reported."""
        with self.lock:
            if fatal and self.report.fatal is None:
                self.report.fatal = reason
            elif not fatal and self.report.stopped is None and self.report.fatal is None:
                self.report.stopped = reason
        self.stop.set()
