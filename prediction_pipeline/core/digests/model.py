"""What a digest is made of: the records the store hands in, and the digest's lines.

Plain frozen dataclasses: no database, no network, no Dagster. `build.build_digest` turns the
records into a `Digest`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from prediction_pipeline.core.markets import MarketStatus

# -- the records the store hands in --------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    user_id: int
    email: str
    name: str | None = None


@dataclass(frozen=True)
class PreviousDigest:
    day: dt.date
    sent_at: dt.datetime | None


@dataclass(frozen=True)
class WatchItem:
    market_id: int
    added_at: dt.datetime


@dataclass(frozen=True)
class MarketState:
    """A market as of the digest day: its latest snapshot on or before that day."""

    market_id: int
    source: str
    source_id: str
    question: str
    slug: str
    status: str
    price: float | None
    observed_on: dt.date
    resolved_outcome: str | None = None


@dataclass(frozen=True)
class PriceAt:
    """A market's price and status as of a baseline day."""

    price: float | None
    status: str


@dataclass(frozen=True)
class ModelForecast:
    """A model's latest prediction on a market as of the digest day."""

    model: str
    made_on: dt.date
    probability: float
    direction: str | None = None  # from prediction_deltas when the deltas asset ran


@dataclass(frozen=True)
class ModelScore:
    """How a model scored on a resolved market (means over its scored predictions)."""

    model: str
    brier: float
    n: int
    market_brier: float | None = None


# -- the digest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ForecastLine:
    model: str
    probability: float
    made_on: dt.date
    delta: float | None  # market price today minus the model's probability
    direction: str | None
    new: bool


@dataclass(frozen=True)
class MarketLine:
    market_id: int
    source_id: str
    question: str
    url: str
    status: str
    price: float | None
    since: dt.date
    since_added: bool  # the change is counted from the day it was added
    baseline_price: float | None
    change: float | None
    new_item: bool
    forecasts: tuple[ForecastLine, ...] = ()


@dataclass(frozen=True)
class ScoreLine:
    model: str
    brier: float
    n: int
    market_brier: float | None

    @property
    def beat_market(self) -> bool | None:
        return None if self.market_brier is None else self.brier < self.market_brier


@dataclass(frozen=True)
class SettledLine:
    market_id: int
    source_id: str
    question: str
    url: str
    status: str  # closed | resolved
    outcome: str | None
    price: float | None
    scores: tuple[ScoreLine, ...] = ()

    @property
    def label(self) -> str:
        if self.status == MarketStatus.RESOLVED:
            return f"Resolved {(self.outcome or '?').upper()}"
        return "Closed, awaiting resolution"


@dataclass(frozen=True)
class Digest:
    recipient: Recipient
    day: dt.date
    previous_day: dt.date | None
    watching: tuple[MarketLine, ...]
    settled: tuple[SettledLine, ...]
    moved: int = 0  # markets whose price moved by at least the threshold
    new_forecasts: int = 0
    new_items: int = 0
    quiet_settled: int = 0  # settled before the baseline: not shown again

    @property
    def has_news(self) -> bool:
        return bool(self.moved or self.new_forecasts or self.new_items or self.settled)

    @property
    def headline(self) -> str:
        """Short enough for a Subject line that does not fold (< 78 characters in all)."""
        parts = []
        if self.moved:
            parts.append(f"{self.moved} moved")
        if self.settled:
            parts.append(f"{len(self.settled)} settled")
        if not parts and self.new_forecasts:
            parts.append(f"{self.new_forecasts} new forecasts")
        if not parts and self.new_items:
            parts.append(f"{self.new_items} newly watched")
        return ", ".join(parts) or "no changes"

    @property
    def summary(self) -> str:
        parts = []
        if self.moved:
            parts.append(f"{self.moved} moved")
        if self.settled:
            parts.append(f"{len(self.settled)} settled")
        if self.new_forecasts:
            parts.append(f"{self.new_forecasts} new forecasts")
        if self.new_items:
            parts.append(f"{self.new_items} newly watched")
        return ", ".join(parts) or "no changes"
