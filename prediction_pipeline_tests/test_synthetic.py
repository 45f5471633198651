import datetime as dt
from collections import Counter

from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.core.synthetic import SyntheticUniverse

DAY = dt.date(2026, 11, 2)


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
