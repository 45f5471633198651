import datetime as dt
import math
from collections import Counter

import numpy as np
import pandas as pd

from prediction_pipeline.core.baselines import BASELINES, MOMENTUM_WINDOW_DAYS
from prediction_pipeline.core.forecast import MarketContext
from prediction_pipeline.core.leaderboard import leaderboard
from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.core.scoring import expected_calibration_error, score_predictions
from prediction_pipeline.core.synthetic import EPOCH, SyntheticUniverse

DAY = dt.date(2026, 11, 2)
FAR_FUTURE = dt.date(2040, 1, 1)  # every market in these tests has resolved by then


def test_same_day_same_data_across_instances():
    first = SyntheticUniverse(size=200, seed=3).active_markets(DAY)
    second = SyntheticUniverse(size=200, seed=3).active_markets(DAY)
    assert first == second
    assert SyntheticUniverse(size=200, seed=4).active_markets(DAY) != first


def test_universe_size_and_variety():
    markets = SyntheticUniverse(size=300).active_markets(DAY)
    assert 200 <= len(markets) <= 400
    assert len({m.source_id for m in markets}) == len(markets)
    assert len(Counter(m.category for m in markets)) == 6
    assert all(m.status is MarketStatus.OPEN and 0 < m.yes_price < 1 for m in markets)
    ends = sorted(m.end_date.date() for m in markets)
    assert ends[0] >= DAY and (ends[-1] - DAY).days > 90  # spread over the coming months


def test_later_days_continue_the_walk():
    universe = SyntheticUniverse(size=100)
    today = {m.source_id: m for m in universe.active_markets(DAY)}
    tomorrow = {m.source_id: m for m in universe.active_markets(DAY + dt.timedelta(days=1))}
    both = set(today) & set(tomorrow)
    assert len(both) > 0.9 * len(today)
    # The walk moves, but day to day it moves a little, not a fresh random draw.
    moves = [abs(today[i].yes_price - tomorrow[i].yes_price) for i in both]
    assert max(moves) < 0.25 and sum(m > 0 for m in moves) > len(moves) / 2
    # Asking for a market's past day again gives what that day gave.
    again = universe.lookup(sorted(both), DAY)
    assert {m.source_id: m for m in again} == {i: today[i] for i in both}


def test_markets_close_and_resolve_some_early():
    universe = SyntheticUniverse(size=300)
    ids = [m.source_id for m in universe.active_markets(DAY)]
    later = universe.lookup(ids, DAY + dt.timedelta(days=120))
    statuses = Counter(m.status for m in later)
    assert statuses[MarketStatus.RESOLVED] > 50
    resolved = [m for m in later if m.status is MarketStatus.RESOLVED]
    assert {m.resolved_outcome for m in resolved} <= {"yes", "no", "void"}
    assert all(m.yes_price in (0.0, 1.0, 0.5) for m in resolved)
    early = [m for m in resolved if m.closed_at.date() < m.end_date.date()]
    assert early, "some markets resolve before their end date"


def test_unknown_ids_are_ignored():
    assert SyntheticUniverse().lookup(["0xabc", "syn-x"], DAY) == []


def _priced_resolved(n_markets: int, seed: int = 7) -> tuple[list[float], list[float], list]:
    """One price per resolved (YES/NO) market, on a seeded random day of its trading life."""
    universe = SyntheticUniverse(size=300, seed=seed)
    pick = np.random.default_rng(0)
    prices, outcomes, markets = [], [], []
    for k in range(n_markets):
        source_id = f"syn-{k:06d}"
        opened = universe.lookup([source_id], FAR_FUTURE)[0]
        if opened.resolved_outcome not in ("yes", "no"):
            continue
        first_day = EPOCH + dt.timedelta(days=math.floor(k / universe._opened_per_day))
        life = (opened.closed_at.date() - first_day).days
        day = first_day + dt.timedelta(days=int(pick.integers(0, life)))
        (then,) = universe.lookup([source_id], day)
        assert then.status is MarketStatus.OPEN
        prices.append(then.yes_price)
        outcomes.append(1.0 if opened.resolved_outcome == "yes" else 0.0)
        markets.append(then)
    return prices, outcomes, markets


def test_synthetic_prices_are_calibrated():
    """The price is P(YES | what is known that day), so it is calibrated by construction."""
    prices, outcomes, _ = _priced_resolved(6_000)
    assert len(prices) >= 5_000
    assert expected_calibration_error(prices, outcomes) <= 0.02
    assert 0.4 < np.mean(outcomes) < 0.6  # both sides happen, not a trivially one-sided set


def test_synthetic_price_is_a_martingale_not_a_bridge_to_the_outcome():
    """The day-to-day price change does not predict the outcome beyond today's price: the
    old price walk drifted toward the secret outcome, so a trend follower could read it."""
    universe = SyntheticUniverse(size=300, seed=7)
    residuals, moves = [], []
    for k in range(3_000):
        source_id = f"syn-{k:06d}"
        (final,) = universe.lookup([source_id], FAR_FUTURE)
        if final.resolved_outcome not in ("yes", "no"):
            continue
        first_day = EPOCH + dt.timedelta(days=math.floor(k / universe._opened_per_day))
        if (final.closed_at.date() - first_day).days < 10:
            continue
        week = [universe.lookup([source_id], first_day + dt.timedelta(days=d))[0] for d in (0, 7)]
        outcome = 1.0 if final.resolved_outcome == "yes" else 0.0
        residuals.append(outcome - week[1].yes_price)
        moves.append(week[1].yes_price - week[0].yes_price)
    # Under a martingale the residual outcome - price is uncorrelated with the past move.
    assert abs(np.corrcoef(moves, residuals)[0, 1]) < 0.05


def test_momentum_does_not_beat_the_calibrated_market():
    """The old bridge-to-the-outcome walk let a trend follower read the future (the demo
    showed momentum at skill +0.3). On calibrated prices its skill interval must contain
    zero or lie below it."""
    universe = SyntheticUniverse(size=300, seed=7)
    pick = np.random.default_rng(1)
    rows = []
    for k in range(600):
        source_id = f"syn-{k:06d}"
        (final,) = universe.lookup([source_id], FAR_FUTURE)
        if final.resolved_outcome not in ("yes", "no"):
            continue
        first_day = EPOCH + dt.timedelta(days=math.floor(k / universe._opened_per_day))
        life = (final.closed_at.date() - first_day).days
        if life < 10:
            continue
        outcome = 1.0 if final.resolved_outcome == "yes" else 0.0
        # near the close, where the demo predicts and where the old walk gave itself away
        for age in pick.integers(max(7, life - 14), life, size=3):
            day = first_day + dt.timedelta(days=int(age))
            history = [
                universe.lookup([source_id], day - dt.timedelta(days=back))[0].yes_price
                for back in range(MOMENTUM_WINDOW_DAYS - 1, -1, -1)
            ]
            ctx = MarketContext(
                market_id=k,
                source_id=source_id,
                question=final.question,
                end_date=final.end_date,
                day=day,
                market_price=history[-1],
                price_history=tuple(history),
            )
            for model, forecast in BASELINES.items():
                p = forecast(ctx).probability
                rows.append((len(rows), model, source_id, "x", p, history[-1], outcome))
    columns = ["prediction_id", "model", "market_id", "category", "probability"]
    scored = score_predictions(pd.DataFrame(rows, columns=[*columns, "market_price", "outcome"]))
    board = leaderboard(scored).set_index("model")
    momentum = board.loc["baseline/momentum"]
    assert momentum["n_markets"] >= 400
    assert momentum["skill_lo"] <= 0.0
    assert not momentum["beats_market"]
