"""Building one user's digest for a day: what changed since the digest before it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from prediction_pipeline.core.digests.model import (
    Digest,
    ForecastLine,
    MarketLine,
    MarketState,
    ModelForecast,
    ModelScore,
    PreviousDigest,
    PriceAt,
    Recipient,
    ScoreLine,
    SettledLine,
    WatchItem,
)
from prediction_pipeline.core.markets import MarketStatus

DEFAULT_PUBLIC_URL = "http://localhost:8000"
#: A price move smaller than this (1 percentage point) is not news on its own.
DEFAULT_MIN_PRICE_CHANGE = 0.01
#: Markets whose trading has ended: reported once in the digest's "settled" part.
SETTLED = frozenset({MarketStatus.CLOSED, MarketStatus.RESOLVED})


def market_url(state: MarketState, public_url: str) -> str:
    if state.source == "polymarket" and state.slug:
        return f"https://polymarket.com/market/{quote(state.slug, safe='')}"
    return f"{public_url.rstrip('/')}/markets/{state.market_id}"


def build_digest(
    recipient: Recipient,
    day: dt.date,
    previous: PreviousDigest | None,
    items: Sequence[WatchItem],
    states: Mapping[int, MarketState],
    baselines: Mapping[tuple[int, dt.date], PriceAt],
    forecasts: Mapping[int, Sequence[ModelForecast]],
    scores: Mapping[int, Sequence[ModelScore]],
    *,
    public_url: str = DEFAULT_PUBLIC_URL,
    min_price_change: float = DEFAULT_MIN_PRICE_CHANGE,
) -> Digest:
    """One user's digest for `day`.

    Each watched market is compared with its state at a baseline: the day of the previous
    digest sent to the user, or the day it was added when that is later (or there was no
    previous digest); `baseline_day` gives the (market, day) pairs the caller must look up.
    News is: a market newly watched since the previous digest, a price move of at least
    `min_price_change`, a model forecast made after the previous digest's day, or a market
    that closed or resolved since its baseline. Markets that had settled before their
    baseline are left out (counted in `quiet_settled`); markets without any snapshot as of
    `day` are left out too.
    """
    watching: list[MarketLine] = []
    settled: list[SettledLine] = []
    moved = new_forecasts = new_items = quiet = 0
    for item in items:
        state = states.get(item.market_id)
        if state is None:
            continue
        since, since_added, new_item = baseline_day(item, previous)
        base = baselines.get((item.market_id, since))
        url = market_url(state, public_url)
        if state.status in SETTLED:
            if base is not None and base.status == state.status and not new_item:
                quiet += 1  # reported by an earlier digest
            else:
                settled.append(_settled_line(state, url, scores.get(state.market_id, ())))
            continue
        lines = _forecast_lines(state, forecasts.get(state.market_id, ()), previous)
        line = _market_line(state, url, base, since, since_added, new_item, lines)
        new_forecasts += sum(forecast.new for forecast in lines)
        if line.change is not None and abs(line.change) >= min_price_change - 1e-12:
            moved += 1
        new_items += new_item
        watching.append(line)
    watching.sort(key=lambda m: (-abs(m.change or 0.0), m.question, m.market_id))
    settled.sort(key=lambda m: (m.status != MarketStatus.RESOLVED, m.question, m.market_id))
    return Digest(
        recipient=recipient,
        day=day,
        previous_day=previous.day if previous else None,
        watching=tuple(watching),
        settled=tuple(settled),
        moved=moved,
        new_forecasts=new_forecasts,
        new_items=new_items,
        quiet_settled=quiet,
    )


def _market_line(
    state: MarketState,
    url: str,
    base: PriceAt | None,
    since: dt.date,
    since_added: bool,
    new_item: bool,
    forecasts: tuple[ForecastLine, ...],
) -> MarketLine:
    """A watched open market: its price, and its change since the baseline when both are known."""
    change = None
    if base is not None and base.price is not None and state.price is not None:
        change = state.price - base.price
    return MarketLine(
        market_id=state.market_id,
        source_id=state.source_id,
        question=state.question,
        url=url,
        status=state.status,
        price=state.price,
        since=since,
        since_added=since_added,
        baseline_price=None if base is None else base.price,
        change=change,
        new_item=new_item,
        forecasts=forecasts,
    )


def _settled_line(state: MarketState, url: str, scores: Sequence[ModelScore]) -> SettledLine:
    resolved = state.status == MarketStatus.RESOLVED
    return SettledLine(
        market_id=state.market_id,
        source_id=state.source_id,
        question=state.question,
        url=url,
        status=state.status,
        outcome=state.resolved_outcome if resolved else None,
        price=state.price,
        scores=tuple(
            ScoreLine(s.model, s.brier, s.n, s.market_brier) for s in sorted(scores, key=_score_key)
        ),
    )


def _forecast_lines(
    state: MarketState, forecasts: Sequence[ModelForecast], previous: PreviousDigest | None
) -> tuple[ForecastLine, ...]:
    """Each model's latest forecast, `new` when made after the previous digest's day."""
    return tuple(
        ForecastLine(
            model=f.model,
            probability=f.probability,
            made_on=f.made_on,
            delta=None if state.price is None else state.price - f.probability,
            direction=f.direction,
            new=previous is None or f.made_on > previous.day,
        )
        for f in sorted(forecasts, key=lambda f: f.model)
    )


def baseline_day(item: WatchItem, previous: PreviousDigest | None) -> tuple[dt.date, bool, bool]:
    """(baseline day, counted from the day it was added, newly watched since the last digest)."""
    added_on = item.added_at.date()
    if previous is None:
        return added_on, True, True
    if previous.sent_at is None:
        new_item = added_on > previous.day
    else:
        new_item = _aware(item.added_at) > _aware(previous.sent_at)
    if new_item and added_on >= previous.day:
        return added_on, True, True
    return previous.day, False, new_item


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands datetimes back naive: they are UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _score_key(score: ModelScore) -> tuple[float, str]:
    return (score.brier, score.model)
