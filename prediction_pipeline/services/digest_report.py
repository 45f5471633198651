"""What one digest delivery did: counts per outcome, why it stopped, a preview; and whether
the day is complete or left to a later run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeliveryReport:
    considered: int = 0
    sent: int = 0
    skipped_nothing_new: int = 0
    skipped_opted_out: int = 0
    skipped_already_sent: int = 0
    skipped_in_flight: int = 0  # held by a live claim of another delivery when we looked
    skipped_failed_earlier: int = 0  # failed for good in an earlier run of the day
    failed_permanent: int = 0
    failed_transient: int = 0  # retries used up: the next run tries again
    released: int = 0  # claimed but never handed over (the batch stopped)
    not_attempted: int = 0  # had news, left unclaimed because the batch had stopped
    lost_claims: int = 0  # taken over by another delivery before our outcome was recorded
    # Users held by another delivery (or lost to one) and still not settled when this run
    # ended ({user id: the run holding the claim, or ""}): the day is not complete.
    held_elsewhere: dict[int, str] = field(default_factory=dict)
    attempts: int = 0  # messages handed to the transport
    retries: int = 0
    maybe_delivered: int = 0  # connection lost after the data went out (then retried)
    connections_opened: int = 0
    fatal: str | None = None
    stopped: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (email, error), first 20
    preview: str | None = None
    elapsed_s: float = 0.0
    send_window_s: float = 0.0  # first to last handover

    @property
    def failed(self) -> int:
        return self.failed_permanent + self.failed_transient

    @property
    def skipped(self) -> int:
        """Users settled for the day without a message from this run."""
        return (
            self.skipped_nothing_new
            + self.skipped_opted_out
            + self.skipped_already_sent
            + self.skipped_failed_earlier
        )

    @property
    def incomplete(self) -> bool:
        """Users left to a later run (transient failures, released claims, a stop, users
        another delivery held or took over and had not settled by the end of this run)."""
        return bool(
            self.failed_transient
            or self.released
            or self.stopped
            or self.fatal
            or self.held_elsewhere
        )

    def held_summary(self) -> str:
        """One line on the users held by another delivery ("" when none)."""
        if not self.held_elsewhere:
            return ""
        runs = sorted({run for run in self.held_elsewhere.values() if run})
        held_by = f" (held by run {', '.join(runs)})" if runs else ""
        return (
            f"{len(self.held_elsewhere)} users claimed by another delivery were not settled by "
            f"the end of this run{held_by}; a later run sends to them once that claim is "
            "released or its lease expires"
        )

    @property
    def messages_per_second(self) -> float:
        return self.attempts / self.send_window_s if self.send_window_s > 0 else 0.0

    def metadata(self) -> dict:
        return {
            "users_considered": self.considered,
            "sent": self.sent,
            "skipped": self.skipped,
            "skipped_nothing_new": self.skipped_nothing_new,
            "skipped_opted_out": self.skipped_opted_out,
            "skipped_already_sent": self.skipped_already_sent,
            "skipped_in_flight": self.skipped_in_flight,
            "lost_claims": self.lost_claims,
            "held_by_another_delivery": len(self.held_elsewhere),
            "skipped_failed_earlier": self.skipped_failed_earlier,
            "failed": self.failed,
            "failed_permanent": self.failed_permanent,
            "failed_transient": self.failed_transient,
            "released_unsent": self.released,
            "not_attempted": self.not_attempted,
            "send_attempts": self.attempts,
            "send_retries": self.retries,
            "maybe_delivered_then_retried": self.maybe_delivered,
            "connections_opened": self.connections_opened,
            "messages_per_second": round(self.messages_per_second, 2),
            "elapsed_s": round(self.elapsed_s, 2),
        }
