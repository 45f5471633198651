"""Service functions for markets and their daily price snapshots (idempotent upserts).

Every value a source sends is fitted to its column here, in one place driven by the column
lengths in `store/tables.py` (`_fit_row`): NUL characters (which PostgreSQL cannot store) are
dropped, text too long for its column is cut with "…" and counted, and a market whose key
(`source_id`) does not fit is rejected and reported. One bad record never fails a batch,
and SQLite (which ignores VARCHAR lengths) stores exactly what PostgreSQL does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from prediction_pipeline.core.batching import SQL_BATCH, batched
from prediction_pipeline.core.markets import Market, MarketStatus, SkippedMarket
from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import market_snapshots, markets


@dataclass(frozen=True)
class IngestCounts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0  # markets that became closed with this ingest
    resolved: int = 0  # markets that became resolved with this ingest
    stale: int = 0  # rows left alone: a newer day already wrote them
    snapshots: int = 0
    truncated: int = 0  # markets stored with at least one value cut to its column
    rejected: tuple[SkippedMarket, ...] = field(default=())  # key too long: not stored


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


# Values that identify a market or carry a fixed vocabulary: cutting one could merge two
# markets or change a meaning, so a value too long for one of these rejects the market.
_KEY_COLUMNS = frozenset({"source", "source_id", "status", "resolved_outcome"})
_ELLIPSIS = "…"


class UnfitValueError(ValueError):
    """A key value does not fit its column: the market cannot be stored."""


def _clean_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; drop it on both databases so that they agree.
    return value.replace("\x00", "")


def _fit_row(row: dict, table: sa.Table) -> tuple[dict, list[str]]:
    """`row` with every string fitted to its column of `table`, and the names of the columns
    whose value was cut. Raises UnfitValueError when a key column's value is too long."""
    fitted, cut = dict(row), []
    for name, value in row.items():
        if isinstance(value, list):  # JSON lists (tags, outcomes): no length, only NULs
            fitted[name] = [_clean_text(v) if isinstance(v, str) else v for v in value]
        if not isinstance(value, str):
            continue
        if name in _KEY_COLUMNS and "\x00" in value:  # the raw key is what look-ups use
            raise UnfitValueError(f"{name} contains a NUL character")
        value = _clean_text(value)
        length = getattr(table.c[name].type, "length", None)
        if length is not None and len(value) > length:
            if name in _KEY_COLUMNS:
                raise UnfitValueError(f"{name} is longer than {length} characters")
            value = value[: length - len(_ELLIPSIS)] + _ELLIPSIS
            cut.append(name)
        fitted[name] = value
    return fitted, cut


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
        ("new", "updated", "unchanged", "closed", "resolved", "stale", "snapshots", "truncated"),
        0,
    )
    rejected: list[SkippedMarket] = []
    keys = list(by_key)
    for chunk in batched(keys, SQL_BATCH):
        rows = {}
        for key in chunk:
            try:
                rows[key], cut = _fit_row(_row(by_key[key], day, now), markets)
            except UnfitValueError as exc:
                rejected.append(SkippedMarket(source_id=key[1][:120], reason=str(exc)))
                continue
            counts["truncated"] += bool(cut)
        chunk = list(rows)
        if not chunk:
            continue
        to_write = _changed_rows(_existing(conn, chunk), rows, day, counts)
        if to_write:
            _upsert_market_rows(conn, to_write)
        counts["snapshots"] += _upsert_snapshots(conn, _ids(conn, chunk), rows, day, now)
    return IngestCounts(**counts, rejected=tuple(rejected))


def _changed_rows(
    existing: dict[tuple[str, str], sa.Row],
    rows: dict[tuple[str, str], dict],
    day: dt.date,
    counts: dict[str, int],
) -> list[dict]:
    """The market rows to write (all but those already observed on a later day); counts
    them as new, updated, unchanged or stale, and the newly closed and resolved."""
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
    return to_write


def _upsert_snapshots(
    conn: sa.Connection,
    ids: dict[tuple[str, str], int],
    rows: dict[tuple[str, str], dict],
    day: dt.date,
    now: dt.datetime,
) -> int:
    """One snapshot per market for `day` (a re-run overwrites it); returns how many."""
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
    return len(snapshots)


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


_MAX_INTERNAL_ID = 2**31 - 1  # markets.id is a 32-bit INTEGER on PostgreSQL


def _internal_id(ref: str) -> int | None:
    """`ref` as an internal id, or None. ASCII digits only ("²".isdigit() is True, and int()
    refuses it), within the id column's range (a 30-digit number overflows SQLite)."""
    if ref.isascii() and ref.isdigit() and len(ref) <= len(str(_MAX_INTERNAL_ID)):
        number = int(ref)
        if 0 < number <= _MAX_INTERNAL_ID:
            return number
    return None


def _may_be_source_id(ref: str) -> bool:
    # Anything longer than the column, or holding NUL (PostgreSQL refuses it), cannot match.
    return bool(ref) and len(ref) <= markets.c.source_id.type.length and "\x00" not in ref


def _ref_conditions(refs: Iterable[str]) -> list[sa.ColumnElement[bool]]:
    refs = list(refs)
    source_ids = [ref for ref in refs if _may_be_source_id(ref)]
    internal = [i for i in map(_internal_id, refs) if i is not None]
    conditions = []
    if source_ids:
        conditions.append(markets.c.source_id.in_(source_ids))
    if internal:
        conditions.append(markets.c.id.in_(internal))
    return conditions


def get_market(conn: sa.Connection, market_ref: str | int) -> sa.Row | None:
    """A market by internal id or by source id; None when there is none (whatever the ref:
    a ref that cannot be an id or a source id simply matches nothing)."""
    ref = str(market_ref).strip()
    conditions = _ref_conditions([ref])
    if not conditions:
        return None
    # The same ref may be one market's id and another's source id: the lowest id wins.
    query = sa.select(markets).where(sa.or_(*conditions)).order_by(markets.c.id).limit(1)
    return conn.execute(query).first()


def market_ids(conn: sa.Connection, market_refs: Iterable[str]) -> dict[str, int]:
    """Internal ids of many refs (internal id or source id) in one query, as `get_market`
    would resolve each one; refs that match no market are absent."""
    refs = {str(ref).strip() for ref in market_refs}
    conditions = _ref_conditions(refs)
    if not conditions:
        return {}
    by_id, by_source_id = {}, {}
    query = sa.select(markets.c.id, markets.c.source_id).where(sa.or_(*conditions))
    for row in conn.execute(query.order_by(markets.c.id)):
        by_id[row.id] = row.id
        by_source_id.setdefault(row.source_id, row.id)
    found = {}
    for ref in refs:
        candidates = [by_id.get(_internal_id(ref)), by_source_id.get(ref)]
        matches = [c for c in candidates if c is not None]
        if matches:
            found[ref] = min(matches)  # the lowest id wins, as in get_market
    return found


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
