"""The digest as an email: one multipart/alternative message with the headers a bulk
sender needs (a stable Message-ID per (user, day), RFC 8058 one-click unsubscribe)."""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
from dataclasses import dataclass
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from prediction_pipeline.core.digests.model import Recipient
from prediction_pipeline.core.email_addresses import clean_name

DEFAULT_SENDER = "Prediction Pipeline <digest@localhost>"
DEFAULT_MESSAGE_ID_DOMAIN = "prediction-pipeline"


def digest_message_id(user_id: int, day: dt.date, domain: str = DEFAULT_MESSAGE_ID_DOMAIN) -> str:
    """The same Message-ID for every send of one (user, day): a re-send after a crash in the
    window between "accepted by the server" and "marked sent" is deduplicable downstream."""
    return f"<digest-{user_id}-{day.isoformat()}@{domain}>"


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    text: str
    html: str
    unsubscribe_url: str
    message_id: str


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
