"""Service functions for markets and their daily price snapshots (idempotent upserts)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.core.markets import Market, MarketStatus
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import market_snapshots, markets

_CHUNK = 500  # rows per statement: well under SQLite's bound-parameter limit


@dataclass(frozen=True)
class IngestCounts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0  # markets that became closed with this ingest
    resolved: int = 0  # markets that became resolved with this ingest
    stale: int = 0  # rows left alone: a newer day already wrote them
    snapshots: int = 0


_TRACKED = (
    "question",
    "description",
    "slug",
    "category",
    "end_date",
    "volume",
    "liquidity",
    "yes_price",
    "status",
    "resolved_outcome",
)


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row(market: Market, day: dt.date, now: dt.datetime) -> dict:
    return {
        "source": market.source,
        "source_id": market.source_id,
        "question": market.question,
        "description": market.description,
        "slug": market.slug,
        "category": market.category,
        "tags": list(market.tags),
        "end_date": market.end_date,
        "volume": market.volume,
        "liquidity": market.liquidity,
        "outcomes": list(market.outcomes),
        "yes_price": market.yes_price,
        "status": market.status.value,
        "resolved_outcome": market.resolved_outcome,
        "closed_at": market.closed_at,
        "observed_day": day,
        "first_seen_at": now,
        "updated_at": now,
    }


def _same(old: sa.Row, new: dict) -> bool:
    for column in _TRACKED:
        before, after = getattr(old, column), new[column]
        if isinstance(before, dt.datetime) and isinstance(after, dt.datetime):
            # SQLite hands datetimes back naive: compare both as UTC.
            before = before if before.tzinfo else before.replace(tzinfo=dt.UTC)
        if before != after:
            return False
    return True


def ingest_markets(
    conn: sa.Connection,
    batch: Iterable[Market],
    day: dt.date,
    observed_at: dt.datetime | None = None,
) -> IngestCounts:
    """Upsert markets and record one snapshot per market for `day`.

    Idempotent: ingesting the same day twice leaves the same rows. A market row is only
    overwritten by an observation from the same or a newer day, so a backfill of an old
    day records its snapshots without rolling current market state back.
    """
    now = observed_at or dt.datetime.now(dt.UTC)
    by_key = {(m.source, m.source_id): m for m in batch}  # last one wins on duplicates
    counts = dict.fromkeys(
        ("new", "updated", "unchanged", "closed", "resolved", "stale", "snapshots"), 0
    )
    keys = list(by_key)
    for chunk in _chunks(keys):
        rows = {key: _row(by_key[key], day, now) for key in chunk}
        existing = _existing(conn, chunk)
        to_write = []
        for key, row in rows.items():
            old = existing.get(key)
            if old is None:
                counts["new"] += 1
            elif old.observed_day > day:
                counts["stale"] += 1
                continue
            elif _same(old, row):
                counts["unchanged"] += 1
            else:
                counts["updated"] += 1
            if row["status"] != MarketStatus.OPEN and (old is None or old.status != row["status"]):
                if row["status"] == MarketStatus.RESOLVED:
                    counts["resolved"] += 1
                elif old is None or old.status == MarketStatus.OPEN:
                    counts["closed"] += 1
            to_write.append(row)
        if to_write:
            _upsert_market_rows(conn, to_write)
        ids = _ids(conn, chunk)
        snapshots = [
            {
                "market_id": ids[key],
                "day": day,
                "observed_at": now,
                "yes_price": row["yes_price"],
                "volume": row["volume"],
                "liquidity": row["liquidity"],
                "status": row["status"],
            }
            for key, row in rows.items()
        ]
        insert = dialect_insert(conn, market_snapshots)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["market_id", "day"],
                set_={
                    c: insert.excluded[c]
                    for c in ("observed_at", "yes_price", "volume", "liquidity", "status")
                },
            ).returning(market_snapshots.c.id),  # RETURNING: batched, not one row a statement
            snapshots,
        ).all()
        counts["snapshots"] += len(snapshots)
    return IngestCounts(**counts)


def _upsert_market_rows(conn: sa.Connection, rows: list[dict]) -> None:
    insert = dialect_insert(conn, markets)
    updatable = [c for c in rows[0] if c not in ("source", "source_id", "first_seen_at")]
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["source", "source_id"],
            set_={c: insert.excluded[c] for c in updatable},
            # Guard against a concurrent run of an older day (the pre-read can be stale).
            where=markets.c.observed_day <= insert.excluded.observed_day,
        ).returning(markets.c.id),  # RETURNING: batched, not one row a statement
        rows,
    ).all()


def _existing(
    conn: sa.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], sa.Row]:
    by_source: dict[str, list[str]] = {}
    for source, source_id in keys:
        by_source.setdefault(source, []).append(source_id)
    found = {}
    for source, ids in by_source.items():
        query = sa.select(markets).where(markets.c.source == source, markets.c.source_id.in_(ids))
        for row in conn.execute(query):
            found[(row.source, row.source_id)] = row
    return found


def _ids(conn: sa.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {key: row.id for key, row in _existing(conn, keys).items()}


def unsettled_source_ids(conn: sa.Connection, source: str, exclude: Iterable[str]) -> list[str]:
    """Markets we hold that are not resolved yet and were not in the latest active list:
    they must be looked up again so that their closing and resolution are recorded."""
    seen = set(exclude)
    query = (
        sa.select(markets.c.source_id)
        .where(markets.c.source == source, markets.c.status != MarketStatus.RESOLVED.value)
        .order_by(markets.c.source_id)
    )
    return [sid for sid in conn.scalars(query) if sid not in seen]


def list_markets(
    conn: sa.Connection, status: str | None = None, limit: int = 20, search: str | None = None
) -> list[sa.Row]:
    query = sa.select(markets).order_by(markets.c.volume.desc(), markets.c.id).limit(limit)
    if status:
        query = query.where(markets.c.status == status)
    if search:
        query = query.where(markets.c.question.ilike(f"%{search}%"))
    return list(conn.execute(query))


def get_market(conn: sa.Connection, market_ref: str | int) -> sa.Row | None:
    """A market by internal id or by source id."""
    ref = str(market_ref)
    query = sa.select(markets).where(markets.c.source_id == ref)
    if ref.isdigit():
        query = sa.select(markets).where(
            sa.or_(markets.c.id == int(ref), markets.c.source_id == ref)
        )
    return conn.execute(query.order_by(markets.c.id).limit(1)).first()


# -- data-quality queries behind the asset checks -------------------------------------------


def snapshot_prices_out_of_range(conn: sa.Connection, day: dt.date) -> int:
    price = market_snapshots.c.yes_price
    query = sa.select(sa.func.count()).where(
        market_snapshots.c.day == day, sa.or_(price < 0, price > 1)
    )
    return conn.scalar(query) or 0


def duplicate_snapshots(conn: sa.Connection, day: dt.date) -> int:
    dupes = (
        sa.select(market_snapshots.c.market_id)
        .where(market_snapshots.c.day == day)
        .group_by(market_snapshots.c.market_id)
        .having(sa.func.count() > 1)
        .subquery()
    )
    return conn.scalar(sa.select(sa.func.count()).select_from(dupes)) or 0


def markets_missing_snapshot(conn: sa.Connection, day: dt.date) -> int:
    """Markets last written by `day` that have no snapshot for it."""
    has_snapshot = sa.exists().where(
        market_snapshots.c.market_id == markets.c.id, market_snapshots.c.day == day
    )
    query = sa.select(sa.func.count()).where(markets.c.observed_day == day, ~has_snapshot)
    return conn.scalar(query) or 0


def markets_without_question(conn: sa.Connection) -> int:
    query = sa.select(sa.func.count()).where(sa.func.trim(markets.c.question) == "")
    return conn.scalar(query) or 0


def snapshot_count(conn: sa.Connection, day: dt.date | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(market_snapshots)
    if day is not None:
        query = query.where(market_snapshots.c.day == day)
    return conn.scalar(query) or 0
