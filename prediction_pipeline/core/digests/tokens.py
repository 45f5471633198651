"""Signed one-click unsubscribe tokens and links.

Tokens are ``v2.<user id>.<HMAC-SHA256 signature, base64url>``, the signature covering the user
id *and* the user's normalised email: no expiry (a link in an old email must keep working), no
state, verifiable by the web app with the same secret and the user's current email, so that a
token cannot unsubscribe whoever gets the same id later, nor survive an email change. ``v1``
tokens (id only) are no longer accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

#: Used only when PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET is unset (offline, demo, tests) and
#: only for the outbox folder: with a transport that reaches real recipients, the digests
#: refuse to start. Anyone can forge tokens with it.
DEV_UNSUBSCRIBE_SECRET = "INSECURE-DEV-ONLY-unsubscribe-secret"
UNSUBSCRIBE_TOKEN_VERSION = "v2"
_TOKEN_CONTEXT = b"prediction-pipeline/unsubscribe/"


class InvalidUnsubscribeToken(ValueError):
    """The token is malformed, of another version, or its signature does not match."""


def signing_key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the unsubscribe secret is empty")
    return key


def _signature(payload: str, secret: str | bytes) -> str:
    digest = hmac.new(
        signing_key(secret), _TOKEN_CONTEXT + payload.encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _token_email(email: str) -> str:
    """The email as the token binds it: stripped and lower-cased, as the store keeps it."""
    if not isinstance(email, str) or not email.strip():
        raise ValueError("an unsubscribe token needs the user's email")
    return email.strip().lower()


def make_unsubscribe_token(user_id: int, secret: str | bytes, *, email: str) -> str:
    """A URL-safe token naming `user_id`, signed with HMAC-SHA256 under `secret` over the id
    and `email` (the email itself is not in the token)."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
        raise ValueError(f"user_id must be a non-negative int, got {user_id!r}")
    payload = f"{UNSUBSCRIBE_TOKEN_VERSION}.{user_id}"
    return f"{payload}.{_signature(f'{payload}.{_token_email(email)}', secret)}"


def unsubscribe_token_user_id(token: str) -> int:
    """The user id a token names, NOT verified: look the user up by it, then call
    `verify_unsubscribe_token` with that user's current email. Raises
    `InvalidUnsubscribeToken` when the token is malformed or of another version."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != UNSUBSCRIBE_TOKEN_VERSION:
        raise InvalidUnsubscribeToken("malformed unsubscribe token")
    user = parts[1]
    if not user.isascii() or not user.isdigit() or (len(user) > 1 and user.startswith("0")):
        raise InvalidUnsubscribeToken("malformed unsubscribe token")
    return int(user)


def verify_unsubscribe_token(token: str, secret: str | bytes, *, email: str) -> int:
    """The user id a token names, if it was signed for that id and `email` (the user's
    current email); raises `InvalidUnsubscribeToken` otherwise. Constant-time comparison."""
    user_id = unsubscribe_token_user_id(token)
    try:
        bound = _token_email(email)
    except ValueError:
        raise InvalidUnsubscribeToken("unsubscribe token signature does not match") from None
    expected = _signature(f"{UNSUBSCRIBE_TOKEN_VERSION}.{user_id}.{bound}", secret)
    signature = token.rsplit(".", 1)[1]
    if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
        raise InvalidUnsubscribeToken("unsubscribe token signature does not match")
    return user_id


def unsubscribe_url(public_url: str, user_id: int, secret: str | bytes, *, email: str) -> str:
    token = make_unsubscribe_token(user_id, secret, email=email)
    return f"{public_url.rstrip('/')}/unsubscribe?token={token}"
