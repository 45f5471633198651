"""Market sources behind one interface: the synthetic universe (offline) and Polymarket Gamma."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from prediction_pipeline.clients.gamma import GammaClient
from prediction_pipeline.core.markets import MarketBatch
from prediction_pipeline.core.synthetic import SyntheticUniverse


class MarketSource(Protocol):
    name: str

    def fetch_active(self, day: dt.date) -> MarketBatch:
        """The markets open for trading on `day`."""
        ...

    def lookup(self, source_ids: list[str], day: dt.date) -> MarketBatch:
        """The state on `day` of markets we hold (closed and resolved ones included)."""
        ...


class SyntheticSource:
    name = "synthetic"

    def __init__(self, size: int = 300, seed: int = 7) -> None:
        self.universe = SyntheticUniverse(size=size, seed=seed)

    def fetch_active(self, day: dt.date) -> MarketBatch:
        return MarketBatch(markets=self.universe.active_markets(day))

    def lookup(self, source_ids: list[str], day: dt.date) -> MarketBatch:
        return MarketBatch(markets=self.universe.lookup(source_ids, day))


class LiveOnlyError(ValueError):
    """Gamma serves the present only: it cannot tell what a market cost on another day."""


class PolymarketSource:
    name = "polymarket"

    def __init__(self, client: GammaClient, max_markets: int = 1000) -> None:
        self.client = client
        self.max_markets = max_markets

    def _check_live(self, day: dt.date) -> None:
        today = dt.datetime.now(dt.UTC).date()
        # Yesterday is allowed: a run scheduled just before midnight may start just after it.
        if not (today - dt.timedelta(days=1) <= day <= today):
            raise LiveOnlyError(
                f"the polymarket source observes live prices only; partition {day} is not "
                f"today ({today}) or yesterday, so its snapshot would be wrong. Use the "
                "synthetic source for historical backfills."
            )

    def fetch_active(self, day: dt.date) -> MarketBatch:
        self._check_live(day)
        return self.client.fetch_active_markets(limit=self.max_markets)

    def lookup(self, source_ids: list[str], day: dt.date) -> MarketBatch:
        self._check_live(day)
        return self.client.fetch_markets_by_condition_ids(source_ids)
