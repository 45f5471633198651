"""Rendering a digest with Jinja2: the text and HTML bodies, the subject, the links.

The HTML template is autoescaped (market text comes from outside); `DigestRenderer.message`
wraps the result into the MIME message (`mime.build_message`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message
from functools import lru_cache
from pathlib import Path

import jinja2

from prediction_pipeline.core.digests.build import DEFAULT_PUBLIC_URL
from prediction_pipeline.core.digests.mime import (
    DEFAULT_MESSAGE_ID_DOMAIN,
    DEFAULT_SENDER,
    RenderedDigest,
    build_message,
    digest_message_id,
)
from prediction_pipeline.core.digests.model import Digest
from prediction_pipeline.core.digests.tokens import signing_key, unsubscribe_url

TEMPLATES_DIR = Path(__file__).parent.parent / "templates"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def points(value: float | None) -> str:
    """A difference of probabilities in percentage points, signed."""
    if value is None:
        return "n/a"
    pts = value * 100
    if abs(pts) < 0.05:
        return "±0.0 pts"
    return f"{pts:+.1f} pts"


@lru_cache(maxsize=1)
def template_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        # The HTML template is autoescaped: questions and names come from outside.
        autoescape=lambda name: bool(name) and name.endswith((".html.j2", ".html")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pct"] = pct
    env.filters["points"] = points
    return env


@dataclass
class DigestRenderer:
    """Renders digests into messages. `secret` signs the unsubscribe links."""

    secret: str | bytes = field(repr=False)  # signs the links: never in a repr
    public_url: str = DEFAULT_PUBLIC_URL
    sender: str = DEFAULT_SENDER
    message_id_domain: str = DEFAULT_MESSAGE_ID_DOMAIN
    _env: jinja2.Environment = field(default_factory=template_environment, repr=False)

    def __post_init__(self) -> None:
        # Fail early, before any user is claimed: an empty secret, a public URL that cannot
        # go into a header, a sender without an address.
        signing_key(self.secret)
        if (
            not re.fullmatch(r"https?://[^\s<>\"]+", self.public_url)
            or not self.public_url.isascii()
        ):
            raise ValueError(f"public URL must be an ASCII http(s) URL: {self.public_url!r}")
        if "@" not in email.utils.parseaddr(self.sender)[1]:
            raise ValueError(f"sender has no email address: {self.sender!r}")
        self._html = self._env.get_template("digest.html.j2")
        self._text = self._env.get_template("digest.txt.j2")

    def render(self, digest: Digest) -> RenderedDigest:
        user = digest.recipient
        link = unsubscribe_url(self.public_url, user.user_id, self.secret, email=user.email)
        subject = f"Your watchlist on {digest.day.isoformat()}: {digest.headline}"
        context = {
            "digest": digest,
            "name": user.name or user.email,
            "unsubscribe_url": link,
            "public_url": self.public_url.rstrip("/"),
            "subject": subject,
        }
        return RenderedDigest(
            subject=subject,
            text=self._text.render(context),
            html=self._html.render(context),
            unsubscribe_url=link,
            message_id=digest_message_id(user.user_id, digest.day, self.message_id_domain),
        )

    def message(self, digest: Digest, *, now: dt.datetime | None = None) -> Message:
        return build_message(self.render(digest), digest.recipient, self.sender, now=now)
