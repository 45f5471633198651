"""What each user's digest is made of: who watches what, and each market's facts as of a day.

Reads only, in batches of `SQL_BATCH` ids per statement. The delivery ledger (claims, leases,
sent, failed, skips) is `store.digest_ledger`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.core.batching import SQL_BATCH, batched
from prediction_pipeline.core.digests import (
    MarketState,
    ModelForecast,
    ModelScore,
    PriceAt,
    WatchItem,
)
from prediction_pipeline.store.tables import (
    forecast_scores,
    market_snapshots,
    markets,
    prediction_deltas,
    predictions,
    users,
    watchlist_items,
)


@dataclass(frozen=True)
class DigestUser:
    user_id: int
    email: str
    name: str | None
    subscribed: bool


def watching_users(conn: sa.Connection, after_id: int, limit: int) -> list[DigestUser]:
    """The next `limit` users (by id, after `after_id`) that watch at least one market."""
    watches = sa.exists().where(watchlist_items.c.user_id == users.c.id)
    query = (
        sa.select(users.c.id, users.c.email, users.c.name, users.c.digest_opt_in)
        .add_columns(users.c.unsubscribed_at)
        .where(users.c.id > after_id, watches)
        .order_by(users.c.id)
        .limit(limit)
    )
    return [
        DigestUser(r.id, r.email, r.name, bool(r.digest_opt_in) and r.unsubscribed_at is None)
        for r in conn.execute(query)
    ]


def watch_items(conn: sa.Connection, user_ids: Sequence[int]) -> dict[int, list[WatchItem]]:
    found: dict[int, list[WatchItem]] = defaultdict(list)
    for chunk in batched(user_ids, SQL_BATCH):
        query = (
            sa.select(watchlist_items.c.user_id, watchlist_items.c.market_id)
            .add_columns(watchlist_items.c.added_at)
            .where(watchlist_items.c.user_id.in_(chunk))
            .order_by(watchlist_items.c.user_id, watchlist_items.c.id)
        )
        for r in conn.execute(query):
            found[r.user_id].append(WatchItem(r.market_id, r.added_at))
    return dict(found)


def _latest_snapshot_query(chunk: Sequence[int], day: dt.date):
    s = market_snapshots.c
    latest = (
        sa.select(s.market_id, sa.func.max(s.day).label("day"))
        .where(s.market_id.in_(chunk), s.day <= day)
        .group_by(s.market_id)
        .subquery()
    )
    return sa.select(s.market_id, s.day, s.yes_price, s.status).join(
        latest, sa.and_(s.market_id == latest.c.market_id, s.day == latest.c.day)
    )


def market_states(
    conn: sa.Connection, market_ids: Sequence[int], day: dt.date
) -> dict[int, MarketState]:
    """Each market as of `day`: its latest snapshot on or before it (markets with no
    snapshot by then are left out)."""
    found: dict[int, MarketState] = {}
    m = markets.c
    for chunk in batched(market_ids, SQL_BATCH):
        snaps = _latest_snapshot_query(chunk, day).subquery()
        query = sa.select(
            m.id, m.source, m.source_id, m.question, m.slug, m.resolved_outcome, snaps
        ).join(snaps, snaps.c.market_id == m.id)
        for r in conn.execute(query):
            found[r.id] = MarketState(
                market_id=r.id,
                source=r.source,
                source_id=r.source_id,
                question=r.question,
                slug=r.slug,
                status=r.status,
                price=r.yes_price,
                observed_on=r.day,
                resolved_outcome=r.resolved_outcome,
            )
    return found


def prices_as_of(
    conn: sa.Connection, market_ids: Sequence[int], day: dt.date
) -> dict[int, PriceAt]:
    found: dict[int, PriceAt] = {}
    for chunk in batched(market_ids, SQL_BATCH):
        for r in conn.execute(_latest_snapshot_query(chunk, day)):
            found[r.market_id] = PriceAt(r.yes_price, r.status)
    return found


def latest_forecasts(
    conn: sa.Connection, market_ids: Sequence[int], day: dt.date
) -> dict[int, list[ModelForecast]]:
    """Each model's latest daily (batch) prediction on each market as of `day`, with the
    drift direction from `prediction_deltas` when the deltas asset computed it for `day`."""
    found: dict[int, list[ModelForecast]] = defaultdict(list)
    p = predictions.c
    for chunk in batched(market_ids, SQL_BATCH):
        latest = (
            sa.select(p.market_id, p.model_slug, sa.func.max(p.day).label("day"))
            .where(p.market_id.in_(chunk), p.day <= day, p.origin == "batch")
            .group_by(p.market_id, p.model_slug)
            .subquery()
        )
        query = (
            sa.select(p.market_id, p.model_slug, p.day, p.probability)
            .add_columns(prediction_deltas.c.direction)
            .join(
                latest,
                sa.and_(
                    p.market_id == latest.c.market_id,
                    p.model_slug == latest.c.model_slug,
                    p.day == latest.c.day,
                ),
            )
            .outerjoin(
                prediction_deltas,
                sa.and_(
                    prediction_deltas.c.prediction_id == p.id,
                    prediction_deltas.c.snapshot_day == day,
                ),
            )
            .where(p.origin == "batch")
        )
        for r in conn.execute(query):
            found[r.market_id].append(
                ModelForecast(r.model_slug, r.day, r.probability, r.direction)
            )
    return dict(found)


def model_scores(conn: sa.Connection, market_ids: Sequence[int]) -> dict[int, list[ModelScore]]:
    """How each model scored on each market (`forecast_scores`): mean Brier over its scored
    predictions, their number, and the market price's mean Brier on the same predictions."""
    found: dict[int, list[ModelScore]] = defaultdict(list)
    f = forecast_scores.c
    for chunk in batched(market_ids, SQL_BATCH):
        query = (
            sa.select(
                f.market_id,
                f.model_slug,
                sa.func.avg(f.brier).label("brier"),
                sa.func.count().label("n"),
                sa.func.avg(f.market_brier).label("market_brier"),
            )
            .where(f.market_id.in_(chunk))
            .group_by(f.market_id, f.model_slug)
        )
        for r in conn.execute(query):
            market_brier = None if r.market_brier is None else float(r.market_brier)
            found[r.market_id].append(ModelScore(r.model_slug, float(r.brier), r.n, market_brier))
    return dict(found)
