"""The market as the rest of the pipeline sees it, whatever source it came from."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MarketStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # trading stopped, outcome not yet settled
    RESOLVED = "resolved"


class Market(BaseModel):
    """One binary market observed at one moment.

    `yes_price` is the price of the YES outcome (found by name, never by position), or
    None when the source has no meaningful price (e.g. Gamma's ["0", "0"]).
    `resolved_outcome` is "yes", "no", or "void" (resolved to neither side) once resolved.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    source_id: str
    question: str = Field(min_length=1)
    description: str = ""
    slug: str = ""
    category: str | None = None
    tags: tuple[str, ...] = ()
    end_date: dt.datetime | None = None
    volume: float = Field(default=0.0, ge=0)
    liquidity: float = Field(default=0.0, ge=0)
    outcomes: tuple[str, ...] = ("Yes", "No")
    yes_price: float | None = Field(default=None, ge=0, le=1)
    status: MarketStatus = MarketStatus.OPEN
    resolved_outcome: str | None = None
    closed_at: dt.datetime | None = None

    @field_validator("question")
    @classmethod
    def _strip_question(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("question is empty")
        return value

    @field_validator("end_date", "closed_at")
    @classmethod
    def _aware_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC) if value is not None else None


class SkippedMarket(BaseModel):
    """A source record that could not become a Market: counted and logged, never fatal."""

    source_id: str
    reason: str


class MarketBatch(BaseModel):
    """What a source returns for one fetch: the markets and the records it had to skip."""

    markets: list[Market] = Field(default_factory=list)
    skipped: list[SkippedMarket] = Field(default_factory=list)
