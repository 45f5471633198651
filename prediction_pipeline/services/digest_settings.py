"""How one day's digest delivery runs: chunk size, send rate, connections, retries, lease."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from prediction_pipeline.clients.http_retry import RetryPolicy
from prediction_pipeline.core import digests as core
from prediction_pipeline.store import digest_ledger as store_ledger


@dataclass(frozen=True)
class DeliverySettings:
    chunk_size: int = 500
    max_messages_per_second: float = 10.0
    connections: int = 2
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=4, initial_wait=1.0, max_wait=30.0)
    )
    min_price_change: float = core.DEFAULT_MIN_PRICE_CHANGE
    lease: dt.timedelta = dt.timedelta(minutes=30)
    max_consecutive_failures: int = 25

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.connections < 1 or self.max_messages_per_second <= 0:
            raise ValueError("chunk_size and connections must be >= 1, the rate > 0")
        store_ledger.check_lease(self.lease)


def delivery_settings(
    *,
    chunk_size: int,
    max_messages_per_second: float,
    connections: int,
    max_send_attempts: int,
    retry_initial_wait_seconds: float,
    retry_max_wait_seconds: float,
    min_price_change: float,
    pending_lease_minutes: float,
    max_consecutive_failures: int,
) -> DeliverySettings:
    """DeliverySettings from the asset's run config (its units and names); raises ValueError
    when they are invalid (a lease under MIN_LEASE...)."""
    return DeliverySettings(
        chunk_size=chunk_size,
        max_messages_per_second=max_messages_per_second,
        connections=connections,
        retry=RetryPolicy(
            max_attempts=max_send_attempts,
            initial_wait=min(retry_initial_wait_seconds, retry_max_wait_seconds),
            max_wait=retry_max_wait_seconds,
        ),
        min_price_change=min_price_change,
        lease=dt.timedelta(minutes=pending_lease_minutes),
        max_consecutive_failures=max_consecutive_failures,
    )
