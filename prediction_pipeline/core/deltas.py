"""How far each prediction sits from the market on a snapshot day, and which way it drifted.

The rule (the database applies it set-wise, see `store/deltas.py`):

* ``delta = price_now - probability`` (in [-1, 1]) and ``abs_delta = |delta|``, where
  ``price_now`` is the market's YES price on the snapshot day;
* ``direction``, comparing the market's distance to the prediction now and when it was made
  (``price_then``): "toward" if ``|price_now - p| < |price_then - p|``, "away" if greater,
  "flat" if the two distances are within `DISTANCE_TOLERANCE` (an unchanged price, or a jump
  to the mirror price on the other side of p), "unknown" if ``price_then`` is missing.

Only predictions made before the snapshot day whose market has a price that day get a delta.
This module also shapes the summary a run reports, from per-(model, direction) aggregates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: Two distances closer than this count as equal (so float noise is not a "move").
DISTANCE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Mover:
    """One of the rows with the largest |delta| (market furthest from the prediction)."""

    prediction_id: int
    model: str
    source_id: str
    question: str
    market_price: float
    delta: float
    abs_delta: float
    direction: str


@dataclass
class DeltaSummary:
    """What one run wrote: rows, statements, counts by direction, mean |delta| per model
    and the largest movers (largest |delta| first, ties by prediction id)."""

    rows: int = 0
    statements: int = 0
    by_direction: dict[str, int] = field(default_factory=dict)
    mean_abs_delta_by_model: dict[str, float] = field(default_factory=dict)
    movers: list[Mover] = field(default_factory=list)


def summarize(
    groups: Iterable[tuple[str, str, int, float]], statements: int, movers: list[Mover]
) -> DeltaSummary:
    """Fold ``(model, direction, rows, sum of |delta|)`` aggregates into a `DeltaSummary`;
    means are rounded to 4 places, models and directions sorted by name."""
    by_direction: dict[str, int] = {}
    count: dict[str, int] = {}
    abs_sum: dict[str, float] = {}
    for model, direction, n, total in groups:
        by_direction[direction] = by_direction.get(direction, 0) + int(n)
        count[model] = count.get(model, 0) + int(n)
        abs_sum[model] = abs_sum.get(model, 0.0) + float(total)
    return DeltaSummary(
        rows=sum(count.values()),
        statements=statements,
        by_direction=dict(sorted(by_direction.items())),
        mean_abs_delta_by_model={m: round(abs_sum[m] / count[m], 4) for m in sorted(count)},
        movers=movers,
    )
