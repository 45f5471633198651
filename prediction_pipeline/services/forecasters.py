"""Forecasters behind one interface: the built-in baselines and OpenRouter models.

`OpenRouterForecaster.forecast` builds the messages (`core.prompts`), asks with the strict JSON
schema, and validates the answer with `core.forecast.parse_forecast`; an invalid answer
(not JSON, out of range, truncated, empty) is re-asked up to `max_attempts` times in all and
then raises `ForecastAttemptsExhausted` (an `InvalidForecast`): never a guessed forecast.

Every forecaster is closed with `aclose()` inside the event loop that used it (an OpenRouter
forecaster owns its client's connection pool).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from prediction_pipeline.clients.http_retry import RetryStats
from prediction_pipeline.clients.openrouter import (
    DEFAULT_MAX_TOKENS,
    Completion,
    OpenRouterClient,
    SpendHook,
)
from prediction_pipeline.clients.rate_limit import ModelLimiter
from prediction_pipeline.core.baselines import BASELINES
from prediction_pipeline.core.forecast import (
    CONFIDENCE_VALUES,
    ForecastOutput,
    ForecastResult,
    InvalidForecast,
    MarketContext,
    forecast_json_schema,
    parse_forecast,
)
from prediction_pipeline.core.prompts import build_messages

logger = logging.getLogger(__name__)


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

    async def aclose(self) -> None:
        """Release the forecaster's connections (inside the event loop that used them)."""
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

    async def aclose(self) -> None:
        pass  # nothing held


class ForecastAttemptsExhausted(InvalidForecast):
    """Every attempt gave an invalid answer. Carries what the attempts cost."""

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        last_error: str,
    ) -> None:
        self.attempts = attempts
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cost_usd = cost_usd
        self.last_error = last_error
        super().__init__(message)


class OpenRouterForecaster:
    """Forecasts one market with one OpenRouter model (`slug`, e.g. ``openai/gpt-4o``)."""

    def __init__(
        self,
        client: OpenRouterClient,
        slug: str,
        *,
        show_market_price: bool = False,
        max_attempts: int = 2,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        limiter: ModelLimiter | None = None,
    ) -> None:
        """`max_attempts` counts every ask, the first included (an invalid answer is re-asked
        since a second try often succeeds); `limiter` overrides the client's for this model."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.client = client
        self.slug = slug
        self.show_market_price = show_market_price
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens
        self.limiter = limiter

    def __repr__(self) -> str:
        return (
            f"OpenRouterForecaster({self.slug!r}, show_market_price={self.show_market_price}, "
            f"max_attempts={self.max_attempts})"
        )

    def messages(self, ctx: MarketContext) -> list[dict]:
        return build_messages(ctx, show_market_price=self.show_market_price, research=ctx.research)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def forecast(
        self,
        ctx: MarketContext,
        *,
        web_search: bool = False,
        stats: RetryStats | None = None,
        spend: SpendHook | None = None,
    ) -> ForecastResult:
        """A validated forecast, or `ForecastAttemptsExhausted` (an `InvalidForecast`) after
        `max_attempts` invalid answers; other errors (`OpenRouterError`, the spend hook's
        refusal) propagate with `cost_usd` set to what the attempts before them cost.

        Tokens, cost and latency are summed over every attempt (each one was paid for); each
        attempt is one `complete` call, reserved and recorded through `spend`.
        """
        messages = self.messages(ctx)
        spent = _Spent()
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                completion = await self.client.complete(
                    self.slug,
                    messages,
                    web_search=web_search,
                    response_format=forecast_json_schema(),
                    max_tokens=self.max_tokens,
                    stats=stats,
                    limiter=self.limiter,
                    spend=spend,
                )
            except Exception as exc:  # the invalid answers before it were paid for
                exc.cost_usd = getattr(exc, "cost_usd", 0.0) + spent.cost_usd
                raise
            spent.add(completion)
            try:
                output = _validated(completion, self.max_tokens)
            except InvalidForecast as exc:
                last_error = str(exc)
                logger.warning(
                    "OpenRouter %s: invalid answer for market %s (attempt %d/%d): %s",
                    self.slug,
                    ctx.market_id,
                    attempt,
                    self.max_attempts,
                    last_error[:300],
                )
                continue
            return spent.result(output, web_search=web_search, attempts=attempt)
        raise ForecastAttemptsExhausted(
            f"{self.slug}: no valid forecast for market {ctx.market_id} after "
            f"{self.max_attempts} attempt(s): {last_error}",
            attempts=self.max_attempts,
            prompt_tokens=spent.prompt_tokens,
            completion_tokens=spent.completion_tokens,
            cost_usd=spent.cost_usd,
            last_error=last_error,
        )


@dataclass
class _Spent:
    """Tokens, cost, latency and 429s summed over a forecast's attempts."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    rate_limited: int = 0

    def add(self, completion: Completion) -> None:
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cost_usd += completion.cost_usd or 0.0
        self.latency_ms += completion.latency_ms
        self.rate_limited += completion.rate_limited

    def result(self, output: ForecastOutput, *, web_search: bool, attempts: int) -> ForecastResult:
        return ForecastResult(
            probability=output.probability,
            confidence=CONFIDENCE_VALUES[output.confidence],
            rationale=output.rationale,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            latency_ms=self.latency_ms,
            web_search_used=web_search,
            attempts=attempts,
            rate_limited=self.rate_limited,
        )


def _validated(completion: Completion, max_tokens: int) -> ForecastOutput:
    if completion.truncated:
        raise InvalidForecast(
            f"answer truncated (finish_reason 'length', {completion.completion_tokens} "
            f"completion tokens, max_tokens {max_tokens})"
        )
    if completion.refusal and not (completion.content or "").strip():
        raise InvalidForecast(f"the model refused: {completion.refusal[:200]!r}")
    return parse_forecast(completion.content)
