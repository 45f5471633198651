"""Run config of a `watchlist_digests` partition."""

from pydantic import Field

from prediction_pipeline.core.digests import DEFAULT_MIN_PRICE_CHANGE
from prediction_pipeline.defs.run_config import RunConfig


class DigestsConfig(RunConfig):
    chunk_size: int = Field(
        default=500, ge=1, le=10_000, description="Users read, decided, claimed per chunk."
    )
    max_messages_per_second: float = Field(
        default=10.0, gt=0, description="Send-rate cap over all connections (no bursts)."
    )
    connections: int = Field(
        default=2, ge=1, le=64, description="Concurrent SMTP connections (sender threads)."
    )
    max_send_attempts: int = Field(
        default=4,
        ge=1,
        description="Attempts per message on transient failures, the first "
        "included; permanent rejections (SMTP 5xx) get one.",
    )
    retry_initial_wait_seconds: float = Field(default=1.0, ge=0, description="Backoff base.")
    retry_max_wait_seconds: float = Field(default=30.0, ge=0, description="Cap on one wait.")
    max_consecutive_failures: int = Field(
        default=25,
        ge=1,
        description="Transient failures in a row (all connections) that stop the batch: the "
        "server is down, the rest is left to the next run.",
    )
    min_price_change: float = Field(
        default=DEFAULT_MIN_PRICE_CHANGE,
        ge=0,
        le=1,
        description="A price move of at least this much (0.01 = 1 point) is news.",
    )
    pending_lease_minutes: float = Field(
        default=30.0,
        # Checked by the asset (at least MIN_LEASE), which fails at once with a clear error:
        # a pydantic bound here would fail the step with an error the retry policy retries.
        description="How long a claim stays live (on the database's clock) after it was taken "
        "or refreshed right before its send; a `pending` claim past it, from a run that "
        "crashed, is retried (at-least-once: the same Message-ID makes a second copy "
        "deduplicable). At least 1 minute: a lease must outlast one send.",
    )
    retries_when_incomplete: int = Field(
        default=3,
        ge=0,
        description="Step retries when users are left to a later attempt (transient failures "
        "after the per-message retries, or a stopped batch); each retry sends only those.",
    )
    retry_delay_seconds: float = Field(
        default=300.0, ge=0, description="Wait before such a step retry."
    )
