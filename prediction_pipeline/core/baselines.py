"""Built-in forecasters that need no network. They are the baselines every LLM must beat.

- `baseline/market`: the market price at prediction time (the efficient-market forecast).
- `baseline/momentum`: the market price pushed along its recent trend, shrunk towards the
  price, so a market drifting up is forecast a little higher than it trades.
"""

from __future__ import annotations

import numpy as np

from prediction_pipeline.core.forecast import ForecastResult, MarketContext

MOMENTUM_WINDOW_DAYS = 7
MOMENTUM_SHRINK = 0.5  # how much of the extrapolated trend to believe
MOMENTUM_HORIZON_DAYS = 7  # extrapolate at most this far ahead
_CLIP = (0.01, 0.99)


class NoMarketPrice(ValueError):
    """A baseline cannot forecast a market that has no price today."""


def market_forecast(ctx: MarketContext) -> ForecastResult:
    if ctx.market_price is None:
        raise NoMarketPrice(f"market {ctx.source_id} has no price on {ctx.day}")
    return ForecastResult(
        probability=ctx.market_price,
        confidence=None,
        rationale="The market price at prediction time.",
    )


def momentum_forecast(ctx: MarketContext) -> ForecastResult:
    if ctx.market_price is None:
        raise NoMarketPrice(f"market {ctx.source_id} has no price on {ctx.day}")
    recent = np.asarray(ctx.price_history[-MOMENTUM_WINDOW_DAYS:], dtype=float)
    slope = 0.0
    if len(recent) >= 3:
        slope = float(np.polyfit(np.arange(len(recent)), recent, 1)[0])  # price per day
    horizon = MOMENTUM_HORIZON_DAYS
    if ctx.end_date is not None:
        horizon = max(0.0, min(horizon, (ctx.end_date.date() - ctx.day).days))
    p = float(np.clip(ctx.market_price + MOMENTUM_SHRINK * slope * horizon, *_CLIP))
    return ForecastResult(
        probability=round(p, 4),
        rationale=(
            f"Market price {ctx.market_price:.3f}, trend {slope:+.4f}/day over "
            f"{len(recent)} days, half of it extrapolated {horizon:.0f} days."
        ),
    )


BASELINES = {"baseline/market": market_forecast, "baseline/momentum": momentum_forecast}
