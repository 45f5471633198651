"""Email transports behind one interface: an outbox folder of `.eml` files (offline default)
and SMTP (`smtp://user:pass@host:587?starttls=true`, `smtps://user:pass@host:465`).

A transport opens *sessions* (`transport.session()`); a session is one connection used by
one worker at a time, and `session.send(email)` hands over one message and returns the
provider's id for it, or raises one of:

- `TransientSendError`: may succeed later (SMTP 4xx, 421 and closed connections, timeouts,
  refused connections). `maybe_delivered` is True when the connection was lost after the
  message data had been handed over (the server may have accepted it: a retry may deliver a
  second copy, with the same Message-ID);
- `PermanentSendError`: this message will never be accepted (SMTP 5xx to RCPT or DATA, such as
  550 unknown recipient): record it, do not retry it;
- `FatalTransportError`: no message can succeed (authentication refused, TLS verification
  failed, STARTTLS unsupported, our sender refused with 5xx, an unwritable outbox): stop.

`send_retrying` is the retry loop for sends: the HTTP clients' `RetryPolicy` and backoff
(`http_retry.retrying_on`), retrying transient errors only. Error texts never carry the SMTP
password: `safe_smtp_url` masks it and errors are scrubbed of it.

One module (over 400 lines) on purpose: the send-error contract above, and the two transports
that must keep it, read together.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import logging
import os
import re
import smtplib
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import tenacity

from prediction_pipeline.clients.http_retry import RetryPolicy, retrying_on

logger = logging.getLogger(__name__)

OUTBOX, SMTP = "outbox", "smtp"
TRANSPORT_KINDS = (OUTBOX, SMTP)


# -- errors -------------------------------------------------------------------------------


class SendError(Exception):
    """A message was not (known to be) accepted."""


class TransientSendError(SendError):
    def __init__(self, message: str, *, maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class PermanentSendError(SendError):
    pass


class FatalTransportError(SendError):
    pass


@dataclass(frozen=True)
class OutgoingEmail:
    """What a transport sends: the envelope and the message as bytes (CRLF line ends)."""

    sender: str  # envelope MAIL FROM (a bare address)
    recipient: str  # envelope RCPT TO (a bare address)
    message_id: str  # the message's Message-ID header
    data: bytes


class EmailSession(Protocol):
    def send(self, email: OutgoingEmail) -> str: ...

    def close(self) -> None: ...


class EmailTransport(Protocol):
    kind: str

    def describe(self) -> str:
        """Where messages go, safe to log (no password)."""
        ...

    def session(self) -> EmailSession: ...


def envelope_address(header_value: str) -> str:
    """The bare address of a From/To header value (`Name <a@b>` -> `a@b`)."""
    address = email.utils.parseaddr(header_value)[1]
    if not address or "@" not in address:
        raise ValueError(f"no email address in {header_value!r}")
    return address


def send_retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] | None = None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """Retry `TransientSendError` only, under the shared policy (`http_retry.retrying_on`)."""
    return retrying_on(policy, TransientSendError, sleep=sleep, before_sleep=before_sleep)


# -- outbox -------------------------------------------------------------------------------

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9@._-]+")


def outbox_file_name(message_id: str) -> str:
    """`<digest-7-2026-11-02@prediction-pipeline>` -> `digest-7-2026-11-02@prediction-pipeline.eml`:
    one file per Message-ID, so a re-send overwrites instead of duplicating."""
    stem = _UNSAFE_FILE_CHARS.sub("_", message_id.strip().strip("<>")).strip("._") or "message"
    return f"{stem[:200]}.eml"


class OutboxTransport:
    """Writes each message to `<directory>/<Message-ID>.eml` (atomically: a temporary file
    renamed into place). Offline default; what the demo uses."""

    kind = OUTBOX

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return f"outbox {self.directory}"

    def session(self) -> OutboxTransport:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalTransportError(f"cannot create outbox {self.directory}: {exc}") from None
        return self

    def send(self, email: OutgoingEmail) -> str:
        name = outbox_file_name(email.message_id)
        target = self.directory / name
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(email.data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except PermissionError as exc:
            raise FatalTransportError(f"cannot write to outbox {self.directory}: {exc}") from None
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.ENOTDIR):
                raise FatalTransportError(
                    f"cannot write to outbox {self.directory}: {exc}"
                ) from None
            raise TransientSendError(f"outbox write failed: {exc}") from None
        return name

    def close(self) -> None:
        pass


# -- SMTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False  # smtps://
    starttls: bool = False
    timeout: float = 30.0
    local_hostname: str | None = None
    verify_tls: bool = True

    def describe(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        auth = f"{self.username}:***@" if self.username else ""
        tls = "?starttls=true" if self.starttls else ""
        return f"{scheme}://{auth}{self.host}:{self.port}{tls}"

    def __repr__(self) -> str:  # the dataclass repr would print the password
        return f"SmtpSettings({self.describe()}, timeout={self.timeout})"

    __str__ = __repr__


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    if name not in query:
        return default
    value = query[name][-1].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"SMTP URL parameter {name}={value!r}: use true or false")


def parse_smtp_url(url: str, *, timeout: float = 30.0) -> SmtpSettings:
    """`smtp://[user[:password]@]host[:port][?starttls=true&timeout=30&verify=true]` or
    `smtps://...` (implicit TLS, default port 465). `smtp://` defaults to port 587 with
    STARTTLS on, or to port 25 with it off; `starttls=` overrides. User and password are
    percent-decoded. Errors never repeat the password."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("invalid SMTP URL (could not parse host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise ValueError(f"SMTP URL must start with smtp:// or smtps://, not {scheme!r}://")
    if not parts.hostname:
        raise ValueError("SMTP URL has no host")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"starttls", "timeout", "verify", "local_hostname"}
    if unknown:
        raise ValueError(f"unknown SMTP URL parameters: {sorted(unknown)}")
    implicit = scheme == "smtps"
    if port is None:
        port = 465 if implicit else (587 if _flag(query, "starttls", True) else 25)
    starttls = False if implicit else _flag(query, "starttls", port == 587)
    if "timeout" in query:
        timeout = float(query["timeout"][-1])
    return SmtpSettings(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        implicit_tls=implicit,
        starttls=starttls,
        timeout=timeout,
        local_hostname=query.get("local_hostname", [None])[-1],
        verify_tls=_flag(query, "verify", True),
    )


def safe_smtp_url(url: str) -> str:
    """The URL with its password masked (or a placeholder if it does not parse)."""
    try:
        return parse_smtp_url(url).describe()
    except ValueError:
        return "smtp://(unparseable URL)"


_QUEUED_AS = re.compile(r"queued as\s+(\S+)", re.IGNORECASE)


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:300]


class SmtpTransport:
    kind = SMTP

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 30.0) -> SmtpTransport:
        return cls(parse_smtp_url(url, timeout=timeout))

    def describe(self) -> str:
        return self.settings.describe()

    def __repr__(self) -> str:
        return f"SmtpTransport({self.describe()})"

    def session(self) -> SmtpSession:
        return SmtpSession(self.settings)


class SmtpSession:
    """One SMTP connection, opened on first use and re-opened after it drops; a NOOP checks
    a connection that sat idle before it is used again."""

    IDLE_CHECK_SECONDS = 15.0

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0
        self.connections_opened = 0

    # The server's replies may quote what we sent; never let the password through.
    def _scrub(self, text: str) -> str:
        password = self.settings.password
        return text.replace(password, "***") if password else text

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.settings.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = self._tls_context()
        smtp: smtplib.SMTP | None = None
        try:
            if s.implicit_tls:
                smtp = smtplib.SMTP_SSL(
                    s.host, s.port, timeout=s.timeout, context=context,
                    local_hostname=s.local_hostname,
                )  # fmt: skip
            else:
                smtp = smtplib.SMTP(
                    s.host, s.port, timeout=s.timeout, local_hostname=s.local_hostname
                )
            smtp.ehlo_or_helo_if_needed()
            if s.starttls:
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            self._discard(smtp)
            raise FatalTransportError(
                f"SMTP authentication refused by {self._where()} for user {s.username!r}: "
                f"{exc.smtp_code} {self._scrub(_reply_text(exc.smtp_error))}"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            self._discard(smtp)
            raise FatalTransportError(
                f"SMTP server {self._where()} does not support what the URL asks "
                f"(STARTTLS or AUTH): {self._scrub(str(exc))}"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            self._discard(smtp)
            raise FatalTransportError(
                f"TLS certificate of {self._where()} not trusted: {exc.verify_message}"
            ) from None
        except smtplib.SMTPConnectError as exc:
            self._discard(smtp)
            raise TransientSendError(
                f"SMTP server {self._where()} refused the session: {exc.smtp_code} "
                f"{self._scrub(_reply_text(exc.smtp_error))}"
            ) from None
        except smtplib.SMTPResponseException as exc:
            self._discard(smtp)
            error = FatalTransportError if 500 <= exc.smtp_code < 600 else TransientSendError
            raise error(
                f"SMTP session setup with {self._where()} failed: {exc.smtp_code} "
                f"{self._scrub(_reply_text(exc.smtp_error))}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            self._discard(smtp)
            raise TransientSendError(
                f"cannot connect to SMTP server {self._where()}: {type(exc).__name__}: "
                f"{self._scrub(str(exc))[:200]}"
            ) from None
        self.connections_opened += 1
        return smtp

    def _discard(self, smtp: smtplib.SMTP | None) -> None:
        if smtp is None:
            return
        with contextlib.suppress(Exception):
            smtp.close()

    def _drop(self) -> None:
        self._discard(self._smtp)
        self._smtp = None

    def _ready(self) -> smtplib.SMTP:
        if self._smtp is not None and time.monotonic() - self._last_used > self.IDLE_CHECK_SECONDS:
            try:
                code, _ = self._smtp.noop()
                if code != 250:
                    self._drop()
            except (smtplib.SMTPException, OSError):
                self._drop()
        if self._smtp is None:
            self._smtp = self._connect()
        return self._smtp

    def _rset(self) -> None:
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _refused(self, code: int, reply: bytes, stage: str, recipient: str) -> SendError:
        text = f"{stage} {recipient}: {code} {self._scrub(_reply_text(reply))}"
        if code == 421:  # the server is closing the connection
            self._drop()
            return TransientSendError(text)
        self._rset()
        if 400 <= code < 500:
            return TransientSendError(text)
        if stage == "MAIL FROM":  # our envelope sender: every message would fail
            return FatalTransportError(f"SMTP server {self._where()} refused the sender: {text}")
        return PermanentSendError(text)

    def send(self, email: OutgoingEmail) -> str:
        smtp = self._ready()
        stage = "MAIL FROM"
        try:
            code, reply = smtp.mail(email.sender)
            if code != 250:
                raise self._refused(code, reply, stage, email.recipient)
            stage = "RCPT TO"
            code, reply = smtp.rcpt(email.recipient)
            if code not in (250, 251):
                raise self._refused(code, reply, stage, email.recipient)
            stage = "DATA"
            code, reply = smtp.data(email.data)
            if code != 250:
                raise self._refused(code, reply, stage, email.recipient)
        except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
            raise self._refused(exc.smtp_code, exc.smtp_error, stage, email.recipient) from None
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            raise TransientSendError(
                f"connection to {self._where()} lost during {stage} for {email.recipient}: "
                f"{type(exc).__name__}",
                maybe_delivered=stage == "DATA",
            ) from None
        finally:
            self._last_used = time.monotonic()
        text = _reply_text(reply)
        queued = _QUEUED_AS.search(text)
        return queued.group(1) if queued else text

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(Exception):
                self._smtp.quit()
            self._drop()


def open_transport(
    kind: str | None, *, smtp_url: str | None, outbox_dir: str | os.PathLike, timeout: float = 30.0
) -> EmailTransport:
    """`kind` outbox or smtp; None picks smtp when an SMTP URL is set, else the outbox."""
    kind = (kind or (SMTP if smtp_url else OUTBOX)).strip().lower()
    if kind == OUTBOX:
        return OutboxTransport(outbox_dir)
    if kind == SMTP:
        if not smtp_url:
            raise ValueError(
                "PREDICTION_PIPELINE_EMAIL_TRANSPORT=smtp needs PREDICTION_PIPELINE_SMTP_URL"
            )
        return SmtpTransport.from_url(smtp_url, timeout=timeout)
    raise ValueError(f"unknown email transport {kind!r}: use one of {TRANSPORT_KINDS}")
