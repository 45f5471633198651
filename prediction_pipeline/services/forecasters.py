"""Forecasters behind one interface: the built-in baselines and OpenRouter models."""

from __future__ import annotations

from typing import Protocol

from prediction_pipeline.clients.http_retry import RetryStats
from prediction_pipeline.clients.openrouter import SpendHook
from prediction_pipeline.core.baselines import BASELINES
from prediction_pipeline.core.forecast import ForecastResult, MarketContext


class Forecaster(Protocol):
    slug: str

    async def forecast(
        self,
        ctx: MarketContext,
        *,
        web_search: bool,
        stats: RetryStats,
        spend: SpendHook | None = None,
    ) -> ForecastResult:
        """`spend` reserves and records every paid provider call the forecast makes; what
        the forecast cost, valid or not, is in the result or the exception's `cost_usd`."""
        ...


class BuiltinForecaster:
    """A baseline from core.baselines; no network, no cost."""

    def __init__(self, slug: str) -> None:
        if slug not in BASELINES:
            raise ValueError(f"unknown built-in model {slug!r}")
        self.slug = slug
        self._fn = BASELINES[slug]

    async def forecast(
        self,
        ctx: MarketContext,
        *,
        web_search: bool,
        stats: RetryStats,
        spend: SpendHook | None = None,
    ) -> ForecastResult:
        stats.record_attempt()  # no provider call: nothing to reserve
        return self._fn(ctx)


async def close_forecaster(forecaster: Forecaster) -> None:
    """Release a forecaster's HTTP connections (inside the event loop that used them)."""
    client = getattr(forecaster, "client", None)
    if client is not None and hasattr(client, "aclose"):
        await client.aclose()
