"""Market sources behind one interface: the synthetic universe (offline) and Polymarket Gamma."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from prediction_pipeline.clients import forecastbench
from prediction_pipeline.clients.gamma import GammaClient
from prediction_pipeline.core.forecastbench import SOURCE_NAME as FORECASTBENCH
from prediction_pipeline.core.markets import MarketBatch, SkippedMarket
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


class ForecastBenchSource:
    """A backtest on a ForecastBench question set: its market questions open on the freeze
    day at the freeze price and resolve as its resolution set says. Questions it cannot use
    (dataset and combination questions, unusable freeze values) are reported as skipped on
    the freeze day; loaded once per source."""

    name = FORECASTBENCH

    def __init__(self, questions: str, resolutions: str | None) -> None:
        self.benchmark = forecastbench.load(questions, resolutions)

    def fetch_active(self, day: dt.date) -> MarketBatch:
        markets = [q.observe(day) for q in self.benchmark.questions.values() if q.freeze_day == day]
        skipped = []
        if day in self.benchmark.freeze_days:
            skipped = [
                SkippedMarket(
                    source_id=self.benchmark.question_set, reason=f"{count} question(s): {reason}"
                )
                for reason, count in sorted(self.benchmark.skipped.items())
            ]
        return MarketBatch(markets=[m for m in markets if m is not None], skipped=skipped)

    def lookup(self, source_ids: list[str], day: dt.date) -> MarketBatch:
        questions = (self.benchmark.questions.get(i) for i in source_ids)
        seen = (q.observe(day) for q in questions if q is not None)
        return MarketBatch(markets=[m for m in seen if m is not None])
