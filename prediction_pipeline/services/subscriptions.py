"""One-click unsubscribe (RFC 8058) for the digest links: check a token against the user
it names, then unsubscribe that user. Idempotent: a second click changes nothing more."""

from __future__ import annotations

import sqlalchemy as sa

from prediction_pipeline.core.digests import (
    InvalidUnsubscribeToken,
    unsubscribe_token_user_id,
    verify_unsubscribe_token,
)
from prediction_pipeline.store import users as user_store


def _verified_user(conn: sa.Connection, token: str, secret: str) -> user_store.User:
    user = user_store.get_user_by_id(conn, unsubscribe_token_user_id(token))
    if user is None:
        raise InvalidUnsubscribeToken("unsubscribe token names no user")
    verify_unsubscribe_token(token, secret, email=user.email)
    return user


def check(engine: sa.Engine, token: str, secret: str) -> str:
    """The email a valid token unsubscribes; raises InvalidUnsubscribeToken otherwise."""
    with engine.connect() as conn:
        return _verified_user(conn, token, secret).email


def unsubscribe(engine: sa.Engine, token: str, secret: str) -> str:
    """Unsubscribe the user a valid token names; returns the email. Nothing is written for
    an invalid token (InvalidUnsubscribeToken)."""
    with engine.begin() as conn:
        user = _verified_user(conn, token, secret)
        if user.digest_opt_in:
            user_store.set_subscription(conn, user.id, subscribed=False)
        return user.email
