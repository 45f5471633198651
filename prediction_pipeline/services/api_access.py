"""What the HTTP API needs besides on-demand work: API keys, the first answers of
idempotent POSTs, and the per-user rate limit on new requests and sessions."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store import api as api_store
from prediction_pipeline.store import events, migrate
from prediction_pipeline.store import users as user_store

FINAL_EVENTS = events.FINAL_EVENTS
KEY_PREFIX = "ppk_"  # tells a leaked key apart from other secrets in a scan


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str

    def __repr__(self) -> str:  # the key itself is never held here
        return f"ApiKey(id={self.id}, name={self.name!r}, prefix={self.prefix!r})"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(engine: sa.Engine, name: str) -> str:
    """A new key, returned once; only its hash is stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValueError("an API key needs a name of 1 to 100 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        api_store.add_key(conn, name, key[: len(KEY_PREFIX) + 6], _hash(key))
    return key


def list_keys(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return api_store.list_keys(conn)


def revoke_key(engine: sa.Engine, name_or_prefix: str) -> int:
    with engine.begin() as conn:
        return api_store.revoke_keys(conn, name_or_prefix)


def authenticate(engine: sa.Engine, presented: str) -> ApiKey | None:
    """The active key matching `presented`, or None. The lookup is by hash, so the time it
    takes does not depend on how much of a guess matches; the final comparison of the
    hashes is constant-time as well."""
    digest = _hash(presented)
    with engine.connect() as conn:
        row = api_store.active_key(conn, digest)
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return ApiKey(row.id, row.name, row.prefix)


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def first_answer(engine: sa.Engine, api_key: ApiKey, key: str) -> sa.Row | None:
    with engine.connect() as conn:
        return api_store.first_answer(conn, api_key.id, key)


def save_answer(
    engine: sa.Engine,
    api_key: ApiKey,
    key: str,
    *,
    endpoint: str,
    fingerprint: str,
    status_code: int,
    response: dict,
) -> None:
    with engine.begin() as conn:
        api_store.save_answer(
            conn,
            api_key.id,
            key,
            endpoint=endpoint,
            fingerprint=fingerprint,
            status_code=status_code,
            response=response,
        )


def retry_after(engine: sa.Engine, email: str, per_minute: int) -> int | None:
    """Seconds until the user may start another request or session, or None if now.
    Counted from the queue tables themselves, so every API process shares the limit."""
    now = dt.datetime.now(dt.UTC)
    window = dt.timedelta(minutes=1)
    with engine.connect() as conn:
        user = user_store.get_user(conn, email)
        if user is None:
            return None  # the service answers for unknown users
        times = api_store.recent_work(conn, user.id, now - window)
    if len(times) < per_minute:
        return None
    oldest_that_counts = times[len(times) - per_minute]
    return max(1, int((oldest_that_counts + window - now).total_seconds()) + 1)


def prediction_view(engine: sa.Engine, prediction_id: int | None) -> dict | None:
    if prediction_id is None:
        return None
    with engine.connect() as conn:
        return api_store.prediction_view(conn, prediction_id)


def events_after(engine: sa.Engine, item_id: str, after_id: int) -> list[sa.Row]:
    with engine.connect() as conn:
        return events.events_after(conn, item_id, after_id)


def readiness(engine: sa.Engine) -> str | None:
    """None when the database answers and is at the code's migration, else why not."""
    head = migrate.head_revision()
    try:
        current = migrate.current_revision(engine)
    except sa.exc.DBAPIError as exc:
        return f"database unreachable ({exc.orig.__class__.__name__})"
    if current != head:
        return (
            f"database at migration {current or 'none'}, the code expects {head}: "
            "run `prediction-pipeline db upgrade`"
        )
    return None
