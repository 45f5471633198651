"""API keys and the stored first answers of idempotent POSTs (the HTTP API's own tables)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import (
    api_idempotency,
    api_keys,
    prediction_requests,
    prediction_sessions,
    predictions,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def add_key(conn: sa.Connection, name: str, prefix: str, key_hash: str) -> int:
    return conn.scalar(
        sa.insert(api_keys)
        .values(name=name, prefix=prefix, key_hash=key_hash, created_at=_now())
        .returning(api_keys.c.id)
    )


def active_key(conn: sa.Connection, key_hash: str) -> sa.Row | None:
    return conn.execute(
        sa.select(api_keys).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
    ).first()


def list_keys(conn: sa.Connection) -> list[sa.Row]:
    return list(conn.execute(sa.select(api_keys).order_by(api_keys.c.id)))


def revoke_keys(conn: sa.Connection, name_or_prefix: str) -> int:
    """Revoke the active keys of that name or prefix; returns how many."""
    result = conn.execute(
        sa.update(api_keys)
        .where(
            sa.or_(api_keys.c.name == name_or_prefix, api_keys.c.prefix == name_or_prefix),
            api_keys.c.revoked_at.is_(None),
        )
        .values(revoked_at=_now())
    )
    return result.rowcount


def first_answer(conn: sa.Connection, api_key_id: int, key: str) -> sa.Row | None:
    return conn.execute(
        sa.select(api_idempotency).where(
            api_idempotency.c.api_key_id == api_key_id,
            api_idempotency.c.idempotency_key == key,
        )
    ).first()


def save_answer(
    conn: sa.Connection,
    api_key_id: int,
    key: str,
    *,
    endpoint: str,
    fingerprint: str,
    status_code: int,
    response: dict,
) -> None:
    """Keep the first answer; a concurrent twin that lost the race writes nothing."""
    conn.execute(
        dialect_insert(conn, api_idempotency)
        .values(
            api_key_id=api_key_id,
            idempotency_key=key,
            endpoint=endpoint,
            fingerprint=fingerprint,
            status_code=status_code,
            response=response,
            created_at=_now(),
        )
        .on_conflict_do_nothing()
    )


def recent_work(conn: sa.Connection, user_id: int, since: dt.datetime) -> list[dt.datetime]:
    """When the user's requests and sessions of the window were created, oldest first."""
    times = []
    for table in (prediction_requests, prediction_sessions):
        times += conn.scalars(
            sa.select(table.c.created_at).where(
                table.c.user_id == user_id, table.c.created_at >= since
            )
        )
    return sorted(t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in times)


def prediction_view(conn: sa.Connection, prediction_id: int) -> dict | None:
    """What a web app shows of one stored prediction."""
    row = conn.execute(sa.select(predictions).where(predictions.c.id == prediction_id)).first()
    if row is None:
        return None
    return {
        "id": row.id,
        "probability": row.probability,
        "confidence": row.confidence,
        "rationale": row.rationale,
        "market_price": row.market_price,
        "web_search_used": row.web_search_used,
        "cost_usd": row.cost_usd,
        "created_at": row.created_at.isoformat(),
    }
