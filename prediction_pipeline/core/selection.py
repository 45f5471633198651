"""Which markets a daily batch forecasts: open markets ending inside a window, top by volume."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Protocol


class Candidate(Protocol):
    id: int
    category: str | None
    end_date: dt.datetime | None
    volume: float
    yes_price: float | None


def end_date_window(
    day: dt.date, target_days_from_now: float, end_date_range_hours: float
) -> tuple[dt.datetime, dt.datetime]:
    """[start of `day` + target days, that + range hours): the end dates a batch wants."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
        days=target_days_from_now
    )
    return start, start + dt.timedelta(hours=end_date_range_hours)


def select_markets(
    candidates: Iterable[Candidate],
    day: dt.date,
    *,
    top_markets_count: int,
    target_days_from_now: float,
    end_date_range_hours: float,
    exclude_categories: Sequence[str] = (),
) -> list[Candidate]:
    """Open markets whose end date falls inside the window and whose category is not
    excluded (case-insensitive), highest volume first (ties by id, so the pick is stable)."""
    start, end = end_date_window(day, target_days_from_now, end_date_range_hours)
    excluded = {c.strip().lower() for c in exclude_categories if c.strip()}
    chosen = [
        c
        for c in candidates
        if c.end_date is not None
        and start <= _utc(c.end_date) < end
        and (c.category or "").lower() not in excluded
    ]
    chosen.sort(key=lambda c: (-(c.volume or 0.0), c.id))
    return chosen[:top_markets_count]


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands timezone-aware columns back naive; they were stored as UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
