"""The daily watchlist digest as pure domain: what goes in it, how it reads, how it is signed.

No database, no network, no Dagster: the store hands in plain records (`Recipient`,
`WatchItem`, `MarketState`, `PriceAt`, `ModelForecast`, `ModelScore`), `build_digest` turns them
into a `Digest` (or says there is nothing new), `DigestRenderer` renders it with Jinja2 (the HTML
part autoescaped: market text comes from outside) into one multipart/alternative message with
a stable Message-ID per (user, day) and RFC 8058 one-click unsubscribe headers.

Unsubscribe tokens are ``v2.<user id>.<HMAC-SHA256 signature, base64url>``, the signature
covering the user id *and* the user's normalised email: no expiry (a link in an old email must
keep working), no state, verifiable by the web app with the same secret and the user's current
email, so that a token cannot unsubscribe whoever gets the same id later, nor survive an email
change. ``v1`` tokens (id only) are no longer accepted.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.policy
import email.utils
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import jinja2

DEFAULT_PUBLIC_URL = "http://localhost:8000"
DEFAULT_SENDER = "Prediction Pipeline <digest@localhost>"
DEFAULT_MESSAGE_ID_DOMAIN = "prediction-pipeline"
#: Used only when PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET is unset (offline, demo, tests) and
#: only for the outbox folder: with a transport that reaches real recipients, the digests
#: refuse to start. Anyone can forge tokens with it.
DEV_UNSUBSCRIBE_SECRET = "INSECURE-DEV-ONLY-unsubscribe-secret"
#: A price move smaller than this (1 percentage point) is not news on its own.
DEFAULT_MIN_PRICE_CHANGE = 0.01

TEMPLATES_DIR = Path(__file__).parent / "templates"
UNSUBSCRIBE_TOKEN_VERSION = "v2"
_TOKEN_CONTEXT = b"prediction-pipeline/unsubscribe/"

OPEN, CLOSED, RESOLVED = "open", "closed", "resolved"
SETTLED = (CLOSED, RESOLVED)


# -- unsubscribe tokens -------------------------------------------------------------------


class InvalidUnsubscribeToken(ValueError):
    """The token is malformed, of another version, or its signature does not match."""


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the unsubscribe secret is empty")
    return key


def _signature(payload: str, secret: str | bytes) -> str:
    digest = hmac.new(_key(secret), _TOKEN_CONTEXT + payload.encode(), hashlib.sha256).digest()
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


def digest_message_id(user_id: int, day: dt.date, domain: str = DEFAULT_MESSAGE_ID_DOMAIN) -> str:
    """The same Message-ID for every send of one (user, day): a re-send after a crash in the
    window between "accepted by the server" and "marked sent" is deduplicable downstream."""
    return f"<digest-{user_id}-{day.isoformat()}@{domain}>"


# -- users --------------------------------------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_EMAIL = re.compile(rf"[^@\s\"(),:;<>\[\]\\]+@{_LABEL}(?:\.{_LABEL})*")


def normalize_email(value: str) -> str:
    """Stripped and lower-cased; raises ValueError unless it looks like one plain address
    (ASCII, no display name, no control characters, a dotted domain or `localhost`)."""
    address = (value or "").strip().lower()
    if len(address) > 254 or not address.isascii() or not _EMAIL.fullmatch(address):
        raise ValueError(f"not an email address: {value!r}")
    domain = address.rsplit("@", 1)[1]
    if "." not in domain and domain != "localhost":
        raise ValueError(f"not an email address (domain has no dot): {value!r}")
    return address


def clean_name(value: str | None) -> str | None:
    """A display name without control characters (no header injection), at most 200 chars."""
    if value is None:
        return None
    name = "".join(" " if unicodedata.category(c).startswith("C") else c for c in value)
    name = " ".join(name.split())[:200]
    return name or None


# -- the records the store hands in --------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    user_id: int
    email: str
    name: str | None = None


@dataclass(frozen=True)
class PreviousDigest:
    day: dt.date
    sent_at: dt.datetime | None


@dataclass(frozen=True)
class WatchItem:
    market_id: int
    added_at: dt.datetime


@dataclass(frozen=True)
class MarketState:
    """A market as of the digest day: its latest snapshot on or before that day."""

    market_id: int
    source: str
    source_id: str
    question: str
    slug: str
    status: str
    price: float | None
    observed_on: dt.date
    resolved_outcome: str | None = None


@dataclass(frozen=True)
class PriceAt:
    """A market's price and status as of a baseline day."""

    price: float | None
    status: str


@dataclass(frozen=True)
class ModelForecast:
    """A model's latest prediction on a market as of the digest day."""

    model: str
    made_on: dt.date
    probability: float
    direction: str | None = None  # from prediction_deltas when the deltas asset ran


@dataclass(frozen=True)
class ModelScore:
    """How a model scored on a resolved market (means over its scored predictions)."""

    model: str
    brier: float
    n: int
    market_brier: float | None = None


# -- the digest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ForecastLine:
    model: str
    probability: float
    made_on: dt.date
    delta: float | None  # market price today minus the model's probability
    direction: str | None
    new: bool


@dataclass(frozen=True)
class MarketLine:
    market_id: int
    source_id: str
    question: str
    url: str
    status: str
    price: float | None
    since: dt.date
    since_added: bool  # the change is counted from the day it was added
    baseline_price: float | None
    change: float | None
    new_item: bool
    forecasts: tuple[ForecastLine, ...] = ()


@dataclass(frozen=True)
class ScoreLine:
    model: str
    brier: float
    n: int
    market_brier: float | None

    @property
    def beat_market(self) -> bool | None:
        return None if self.market_brier is None else self.brier < self.market_brier


@dataclass(frozen=True)
class SettledLine:
    market_id: int
    source_id: str
    question: str
    url: str
    status: str  # closed | resolved
    outcome: str | None
    price: float | None
    scores: tuple[ScoreLine, ...] = ()

    @property
    def label(self) -> str:
        if self.status == RESOLVED:
            return f"Resolved {(self.outcome or '?').upper()}"
        return "Closed, awaiting resolution"


@dataclass(frozen=True)
class Digest:
    recipient: Recipient
    day: dt.date
    previous_day: dt.date | None
    watching: tuple[MarketLine, ...]
    settled: tuple[SettledLine, ...]
    moved: int = 0  # markets whose price moved by at least the threshold
    new_forecasts: int = 0
    new_items: int = 0
    quiet_settled: int = 0  # settled before the baseline: not shown again

    @property
    def has_news(self) -> bool:
        return bool(self.moved or self.new_forecasts or self.new_items or self.settled)

    @property
    def headline(self) -> str:
        """Short enough for a Subject line that does not fold (< 78 characters in all)."""
        parts = []
        if self.moved:
            parts.append(f"{self.moved} moved")
        if self.settled:
            parts.append(f"{len(self.settled)} settled")
        if not parts and self.new_forecasts:
            parts.append(f"{self.new_forecasts} new forecasts")
        if not parts and self.new_items:
            parts.append(f"{self.new_items} newly watched")
        return ", ".join(parts) or "no changes"

    @property
    def summary(self) -> str:
        parts = []
        if self.moved:
            parts.append(f"{self.moved} moved")
        if self.settled:
            parts.append(f"{len(self.settled)} settled")
        if self.new_forecasts:
            parts.append(f"{self.new_forecasts} new forecasts")
        if self.new_items:
            parts.append(f"{self.new_items} newly watched")
        return ", ".join(parts) or "no changes"


def market_url(state: MarketState, public_url: str) -> str:
    if state.source == "polymarket" and state.slug:
        return f"https://polymarket.com/market/{quote(state.slug, safe='')}"
    return f"{public_url.rstrip('/')}/markets/{state.market_id}"


def build_digest(
    recipient: Recipient,
    day: dt.date,
    previous: PreviousDigest | None,
    items: Sequence[WatchItem],
    states: Mapping[int, MarketState],
    baselines: Mapping[tuple[int, dt.date], PriceAt],
    forecasts: Mapping[int, Sequence[ModelForecast]],
    scores: Mapping[int, Sequence[ModelScore]],
    *,
    public_url: str = DEFAULT_PUBLIC_URL,
    min_price_change: float = DEFAULT_MIN_PRICE_CHANGE,
) -> Digest:
    """One user's digest for `day`.

    Each watched market is compared with its state at a baseline: the day of the previous
    digest sent to the user, or the day it was added when that is later (or there was no
    previous digest); `baseline_day` gives the (market, day) pairs the caller must look up.
    News is: a market newly watched since the previous digest, a price move of at least
    `min_price_change`, a model forecast made after the previous digest's day, or a market
    that closed or resolved since its baseline. Markets that had settled before their
    baseline are left out (counted in `quiet_settled`); markets without any snapshot as of
    `day` are left out too.
    """
    watching: list[MarketLine] = []
    settled: list[SettledLine] = []
    moved = new_forecasts = new_items = quiet = 0
    for item in items:
        state = states.get(item.market_id)
        if state is None:
            continue
        since, since_added, new_item = baseline_day(item, previous)
        base = baselines.get((item.market_id, since))
        url = market_url(state, public_url)
        if state.status in SETTLED:
            if base is not None and base.status == state.status and not new_item:
                quiet += 1  # reported by an earlier digest
                continue
            settled.append(
                SettledLine(
                    market_id=state.market_id,
                    source_id=state.source_id,
                    question=state.question,
                    url=url,
                    status=state.status,
                    outcome=state.resolved_outcome if state.status == RESOLVED else None,
                    price=state.price,
                    scores=tuple(
                        ScoreLine(s.model, s.brier, s.n, s.market_brier)
                        for s in sorted(scores.get(state.market_id, ()), key=_score_key)
                    ),
                )
            )
            continue
        change = None
        if base is not None and base.price is not None and state.price is not None:
            change = state.price - base.price
        lines = []
        for f in sorted(forecasts.get(state.market_id, ()), key=lambda f: f.model):
            is_new = previous is None or f.made_on > previous.day
            new_forecasts += is_new
            lines.append(
                ForecastLine(
                    model=f.model,
                    probability=f.probability,
                    made_on=f.made_on,
                    delta=None if state.price is None else state.price - f.probability,
                    direction=f.direction,
                    new=is_new,
                )
            )
        if change is not None and abs(change) >= min_price_change - 1e-12:
            moved += 1
        new_items += new_item
        watching.append(
            MarketLine(
                market_id=state.market_id,
                source_id=state.source_id,
                question=state.question,
                url=url,
                status=state.status,
                price=state.price,
                since=since,
                since_added=since_added,
                baseline_price=None if base is None else base.price,
                change=change,
                new_item=new_item,
                forecasts=tuple(lines),
            )
        )
    watching.sort(key=lambda m: (-abs(m.change or 0.0), m.question, m.market_id))
    settled.sort(key=lambda m: (m.status != RESOLVED, m.question, m.market_id))
    return Digest(
        recipient=recipient,
        day=day,
        previous_day=previous.day if previous else None,
        watching=tuple(watching),
        settled=tuple(settled),
        moved=moved,
        new_forecasts=new_forecasts,
        new_items=new_items,
        quiet_settled=quiet,
    )


def baseline_day(item: WatchItem, previous: PreviousDigest | None) -> tuple[dt.date, bool, bool]:
    """(baseline day, counted from the day it was added, newly watched since the last digest)."""
    added_on = item.added_at.date()
    if previous is None:
        return added_on, True, True
    if previous.sent_at is None:
        new_item = added_on > previous.day
    else:
        new_item = _aware(item.added_at) > _aware(previous.sent_at)
    if new_item and added_on >= previous.day:
        return added_on, True, True
    return previous.day, False, new_item


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands datetimes back naive: they are UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _score_key(score: ModelScore) -> tuple[float, str]:
    return (score.brier, score.model)


# -- rendering ----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    text: str
    html: str
    unsubscribe_url: str
    message_id: str


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
        _key(self.secret)
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


# The legacy MIME classes with the compat32 policy: the same stdlib package, about twice as
# fast as EmailMessage (whose header registry re-parses every header), which matters when one
# process renders 100,000 digests. Header values are all ours (or cleaned) and ASCII-encoded
# here, so the modern policy's parsing buys nothing. CRLF line ends, as SMTP wants; headers
# are not folded (all are far below the 998-character limit; a folded List-Unsubscribe URL
# reads back with a leading space in some parsers).
_MIME_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=None)


def _address(display: str | None, address: str) -> str:
    """`Name <addr>`, the name RFC 2047-encoded when it is not ASCII."""
    return email.utils.formataddr((clean_name(display) or "", address), charset="utf-8")


def _header(value: str) -> str:
    if "\r" in value or "\n" in value or not value.isascii():
        raise ValueError(f"header value must be one ASCII line: {value!r}")
    return value


def build_message(
    rendered: RenderedDigest,
    recipient: Recipient,
    sender: str,
    *,
    now: dt.datetime | None = None,
) -> Message:
    """One multipart/alternative message (text first, HTML preferred) with the headers a
    bulk sender needs: a stable Message-ID, List-Unsubscribe (+ RFC 8058 one-click).
    Both parts are UTF-8 in base64: safe for any line length and any text, 7-bit clean."""
    sender_name, sender_address = email.utils.parseaddr(sender)
    if "@" not in sender_address:
        raise ValueError(f"sender has no email address: {sender!r}")
    msg = MIMEMultipart("alternative", policy=_MIME_POLICY)
    msg["From"] = _address(sender_name, sender_address)
    msg["To"] = _address(recipient.name, recipient.email)
    msg["Subject"] = _header(rendered.subject)
    msg["Date"] = email.utils.format_datetime(now or dt.datetime.now(dt.UTC))
    msg["Message-ID"] = _header(rendered.message_id)
    msg["List-Unsubscribe"] = _header(f"<{rendered.unsubscribe_url}>")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Auto-Submitted"] = "auto-generated"
    for body, subtype in ((rendered.text, "plain"), (rendered.html, "html")):
        canonical = body.replace("\r\n", "\n").replace("\n", "\r\n")  # CRLF in text/*
        msg.attach(MIMEText(canonical, subtype, "utf-8", policy=_MIME_POLICY))
    return msg
