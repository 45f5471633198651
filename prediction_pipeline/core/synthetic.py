"""A deterministic synthetic market universe: the offline default and the benchmark source.

Every market k has its own seeded random streams (properties, price walk), so a market's
history does not depend on which day is asked for or on the universe size: the same day
always yields the same data, and later days continue the same walk. About `size` markets
are open on any day; new ones open every day and old ones close, some early, and resolve
a few days later, so scoring has something to score.

Prices are calibrated by construction. Each market has a latent Gaussian random walk over
its trading life and a surprise revealed at the resolution; the market resolves YES iff walk
end + surprise is above zero. The price on a day is the probability of YES given the walk so
far, ``Phi(x_t / (sigma * sqrt(days left + surprise days)))``:
a martingale, so the price is the honest probability of YES given what is known that day,
and no forecaster that sees only past prices can beat it systematically. Markets still get
more informative as they near their close, like real ones.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from prediction_pipeline.core.markets import Market, MarketStatus

EPOCH = dt.date(2024, 1, 1)
MIN_LIFE_DAYS = 14
MAX_LIFE_DAYS = 240
MAX_RESOLUTION_LAG_DAYS = 3
_WALK_SIGMA = 1.0  # daily step of the latent walk (only its ratio to the start matters)
_START_SPREAD = 1.0  # the opening value in units of sigma * sqrt(life): opening prices spread
# The outcome is revealed with a surprise: YES iff walk_end + J > 0, J ~ N(0, sigma^2 * this).
# Without it the price is all but 0 or 1 in a market's last days; with it some doubt remains
# until the resolution, as with real events.
_RESOLUTION_SURPRISE_DAYS = 10.0

_TOPICS: dict[str, list[tuple[str, str]]] = {
    "Politics": [
        ("the incumbent", "win the {region} governor race"),
        ("the opposition", "lead the {region} polls"),
        ("parliament", "pass the {region} budget"),
        ("the senate", "confirm the new {region} envoy"),
    ],
    "Crypto": [
        ("Bitcoin", "trade above ${n}k"),
        ("Ether", "close above ${n}00"),
        ("a spot Solana ETF", "be approved in {region}"),
        ("stablecoin supply", "exceed ${n}0bn"),
    ],
    "Sports": [
        ("the {region} Falcons", "win the championship"),
        ("the {region} Rovers", "reach the final"),
        ("a {region} runner", "break the marathon record"),
        ("the {region} national team", "qualify for the cup"),
    ],
    "Economics": [
        ("{region} inflation", "fall below {n}.0%"),
        ("the {region} central bank", "cut rates"),
        ("{region} unemployment", "rise above {n}.5%"),
        ("{region} GDP growth", "beat {n}.0%"),
    ],
    "Science": [
        ("a crewed lunar mission", "launch from {region}"),
        ("the {region} fusion project", "report net energy gain"),
        ("a new {region} vaccine", "receive approval"),
        ("the {region} telescope", "publish first images"),
    ],
    "Culture": [
        ("a {region} film", "win best picture"),
        ("the {region} album of the year", "top the charts for {n} weeks"),
        ("a {region} streamer", "pass {n}0M subscribers"),
        ("the {region} festival", "sell out"),
    ],
}
_REGIONS = ["Avalon", "Borealis", "Cascadia", "Dorado", "Elysia", "Fjordland", "Galtia", "Hespera"]
_CATEGORIES = sorted(_TOPICS)


@dataclass(frozen=True)
class _Plan:
    """Everything about market k that does not depend on the day asked for."""

    k: int
    open_day: dt.date
    end_day: dt.date  # the scheduled end date shown to traders
    close_day: dt.date  # when trading actually stops (earlier for early resolutions)
    resolve_day: dt.date
    outcome: str  # "yes", "no" or "void"
    category: str
    question: str
    description: str
    final_volume: float
    liquidity_ratio: float


class SyntheticUniverse:
    """`size` is roughly how many markets are open on any day."""

    def __init__(self, size: int = 300, seed: int = 7) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.seed = seed
        mean_life = (MIN_LIFE_DAYS + MAX_LIFE_DAYS) / 2
        self._opened_per_day = size / mean_life

    # -- public interface -------------------------------------------------------------
    def active_markets(self, day: dt.date) -> list[Market]:
        """Markets open for trading on `day`, as a Gamma active-list fetch would return."""
        plans = (self._plan(k) for k in self._candidates(day))
        return [self._observe(p, day) for p in plans if p.open_day <= day < p.close_day]

    def lookup(self, source_ids: list[str], day: dt.date) -> list[Market]:
        """The state on `day` of the given markets (closed and resolved ones included)."""
        found = []
        for source_id in source_ids:
            k = _parse_id(source_id)
            if k is None:
                continue
            plan = self._plan(k)
            if plan.open_day <= day:
                found.append(self._observe(plan, day))
        return found

    # -- internals ----------------------------------------------------------------------
    def _candidates(self, day: dt.date) -> range:
        offset = (day - EPOCH).days
        first = max(0, math.floor((offset - MAX_LIFE_DAYS) * self._opened_per_day))
        last = max(0, math.ceil((offset + 1) * self._opened_per_day))
        return range(first, last)

    def _plan(self, k: int) -> _Plan:
        return _plan(self.seed, self._opened_per_day, k)

    def _observe(self, plan: _Plan, day: dt.date) -> Market:
        life = (plan.close_day - plan.open_day).days
        age = min((day - plan.open_day).days, life)
        if day >= plan.resolve_day:
            status = MarketStatus.RESOLVED
            price = {"yes": 1.0, "no": 0.0}.get(plan.outcome, 0.5)
        else:
            status = MarketStatus.CLOSED if day >= plan.close_day else MarketStatus.OPEN
            price = float(np.clip(np.round(self._walk(plan)[age], 3), 0.01, 0.99))
        volume = plan.final_volume * (age + 1) / (life + 1)
        closed_at = None
        if status is not MarketStatus.OPEN:
            closed_at = dt.datetime.combine(plan.close_day, dt.time(18), tzinfo=dt.UTC)
        return Market(
            source="synthetic",
            source_id=f"syn-{plan.k:06d}",
            question=plan.question,
            description=plan.description,
            slug=f"syn-{plan.k:06d}",
            category=plan.category,
            tags=(plan.category,),
            end_date=dt.datetime.combine(plan.end_day, dt.time(23, 59), tzinfo=dt.UTC),
            volume=round(volume, 2),
            liquidity=round(volume * plan.liquidity_ratio, 2),
            yes_price=price,
            status=status,
            resolved_outcome=plan.outcome if status is MarketStatus.RESOLVED else None,
            closed_at=closed_at,
        )

    def _walk(self, plan: _Plan) -> np.ndarray:
        return _prices(self.seed, plan.k, (plan.close_day - plan.open_day).days)


@lru_cache(maxsize=200_000)
def _plan(seed: int, opened_per_day: float, k: int) -> _Plan:
    rng = np.random.default_rng([seed, k, 0])
    open_day = EPOCH + dt.timedelta(days=math.floor(k / opened_per_day))
    life = int(rng.integers(MIN_LIFE_DAYS, MAX_LIFE_DAYS + 1))
    end_day = open_day + dt.timedelta(days=life)
    close_day = end_day
    if rng.random() < 0.12:  # some markets resolve well before their end date
        close_day = open_day + dt.timedelta(days=int(rng.integers(3, life)))
    resolve_day = close_day + dt.timedelta(days=int(rng.integers(0, MAX_RESOLUTION_LAG_DAYS + 1)))
    void = rng.random() < 0.02  # cancelled or settled 50-50, whatever the walk says
    category = _CATEGORIES[int(rng.integers(len(_CATEGORIES)))]
    subject, event = _TOPICS[category][int(rng.integers(4))]
    region = _REGIONS[int(rng.integers(len(_REGIONS)))]
    n = int(rng.integers(2, 10))
    text = f"{subject} {event}".format(region=region, n=n)
    question = f"Will {text} by {end_day:%B} {end_day.day}, {end_day.year}?"
    description = (
        f"This market resolves to Yes if {text} on or before {end_day.isoformat()} "
        f"(23:59 UTC), according to official sources. Otherwise it resolves to No. "
        f"Synthetic market #{k} in the {category} category."
    )
    trading_days = (close_day - open_day).days
    ends_above_zero = _latent(seed, k, trading_days)[-1] + _surprise(seed, k) > 0
    outcome = "void" if void else ("yes" if ends_above_zero else "no")
    return _Plan(
        k=k,
        open_day=open_day,
        end_day=end_day,
        close_day=close_day,
        resolve_day=resolve_day,
        outcome=outcome,
        category=category,
        question=question[0].upper() + question[1:],
        description=description,
        final_volume=float(rng.lognormal(mean=10.5, sigma=1.6)),
        liquidity_ratio=float(rng.uniform(0.02, 0.2)),
    )


@lru_cache(maxsize=50_000)
def _latent(seed: int, k: int, life: int) -> np.ndarray:
    """The latent walk from the opening day (index 0) to the close (index `life`).

    Its own seeded stream per market, drawn whole: the same day always reads the same value
    and later days continue the same walk. YES iff the last value plus the surprise > 0.
    """
    rng = np.random.default_rng([seed, k, 1])
    life = max(life, 1)
    start = rng.standard_normal() * _START_SPREAD * _WALK_SIGMA * math.sqrt(life)
    steps = rng.standard_normal(life) * _WALK_SIGMA
    return start + np.concatenate([[0.0], np.cumsum(steps)])


def _surprise(seed: int, k: int) -> float:
    """The part of the outcome nobody can see before the resolution (own seeded stream)."""
    rng = np.random.default_rng([seed, k, 2])
    return float(rng.standard_normal() * _WALK_SIGMA * math.sqrt(_RESOLUTION_SURPRISE_DAYS))


@lru_cache(maxsize=50_000)
def _prices(seed: int, k: int, life: int) -> np.ndarray:
    """P(YES | walk so far) for each day from the opening (index 0) to the close (`life`).

    With d days left, walk_end + J is x_t + N(0, sigma^2 (d + surprise days)), so
    P(YES) = Phi(x_t / (sigma sqrt(d + surprise days))).
    """
    walk = _latent(seed, k, life)
    days_left = np.arange(len(walk) - 1, -1, -1, dtype="float64")
    z = walk / (_WALK_SIGMA * np.sqrt(days_left + _RESOLUTION_SURPRISE_DAYS))
    return np.array([_normal_cdf(v) for v in z])


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _parse_id(source_id: str) -> int | None:
    if not source_id.startswith("syn-"):
        return None
    try:
        return int(source_id[4:])
    except ValueError:
        return None
