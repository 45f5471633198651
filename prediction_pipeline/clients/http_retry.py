"""One retry policy for every HTTP client of the pipeline (Gamma, OpenRouter, alert webhooks),
and the backoff that email sends and ledger commits share with it (`retrying_on`).

Built on tenacity and usable from sync and async code:

- retried: `httpx.TimeoutException`, transport errors (connection refused/reset, dropped
  connections, `RemoteProtocolError`), and responses whose status is in
  `RetryPolicy.retry_statuses` (429, 500, 502, 503, 504 by default), plus any response a
  caller's `retry_on` hook accepts (e.g. OpenRouter's 402 with
  ``metadata.reason == "in_flight_budget_exhausted"``, or 408);
- not retried: every other status (400, 401, 403, 404, ...) is returned to the caller at once,
  and transport errors that cannot succeed on a second try (`UnsupportedProtocol`,
  `LocalProtocolError`: our own bugs);
- wait: exponential backoff with jitter ("full": uniform in [0, min(max_wait, initial * 2^n)];
  "plus": min(max_wait, initial * 2^n + uniform(0, initial)); or "none"), except that a
  `Retry-After` header (delta-seconds or HTTP-date) is honoured as is, capped by
  `max_retry_after`;
- bounded: at most `max_attempts` attempts, then the last error is re-raised
  (`RetryableHTTPError` carrying the last response, or the httpx exception).

Callers pass a `RetryStats` to count attempts, retries, 429s and time slept, which they report
as Dagster metadata. Logs carry only the method, the URL path and the status: never headers
(Authorization) nor query strings. Where the path itself is a secret (Slack-style webhooks:
``/services/T0/B0/XXXX``), `RetryPolicy(secret_url=True)` makes logs and errors show only the
scheme and host (`redact_url`).

One module (over 400 lines) on purpose: one retry policy, and the error descriptions and URL
redaction its log lines and errors use.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import threading
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})

ResponsePredicate = Callable[[httpx.Response], bool]
"""A caller's hook: True when this (otherwise non-retryable) response should be retried."""

# Transport errors that a retry cannot fix: malformed URL scheme, a request we built wrongly.
_NEVER_RETRY_TRANSPORT: tuple[type[Exception], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)


class RetryPolicy(BaseModel):
    """Retry settings; one instance per client, overridable per resource config."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=5, ge=1, description="Attempts in all, the first included.")
    initial_wait: float = Field(default=0.5, ge=0, description="Backoff base, in seconds.")
    max_wait: float = Field(default=30.0, ge=0, description="Cap on one backoff wait, seconds.")
    jitter: Literal["full", "plus", "none"] = "full"
    max_retry_after: float = Field(
        default=60.0, ge=0, description="Cap on a wait taken from a Retry-After header, seconds."
    )
    retry_statuses: frozenset[int] = RETRYABLE_STATUSES
    secret_url: bool = Field(
        default=False,
        description="The URL's path and query are secrets (webhooks): logs and errors show "
        "only its scheme and host.",
    )

    @model_validator(mode="after")
    def _check_waits(self) -> RetryPolicy:
        if self.initial_wait > self.max_wait:
            raise ValueError("initial_wait must not exceed max_wait")
        return self


class RetryableHTTPError(Exception):
    """A response that may succeed if sent again (429, 5xx, or a caller-specific case).

    Raised inside the retry loop to signal a retry; re-raised to the caller, with the last
    response attached, once the attempts are used up.
    """

    def __init__(
        self, response: httpx.Response, reason: str | None = None, *, secret_url: bool = False
    ) -> None:
        self.response = response
        self.status_code = response.status_code
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        self.reason = reason or f"HTTP {response.status_code}"
        super().__init__(f"{_describe_request(response, secret_url)}: {self.reason}")


@dataclass
class RetryStats:
    """Counters shared by the calls of one client (thread-safe); report them as metadata."""

    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429 responses seen, retried or not
    total_wait: float = 0.0
    waits: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)  # retryable statuses seen
    errors: Counter[str] = field(default_factory=Counter)  # transport errors seen, by class
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_attempt(self) -> None:
        with self._lock:
            self.attempts += 1

    def record_failure(self, exc: BaseException | None) -> None:
        """Count one failed attempt that the policy considers retryable."""
        with self._lock:
            if isinstance(exc, RetryableHTTPError):
                self.statuses[exc.status_code] += 1
                if exc.status_code == 429:
                    self.rate_limited += 1
            elif exc is not None:
                self.errors[type(exc).__name__] += 1

    def record_sleep(self, seconds: float) -> None:
        with self._lock:
            self.retries += 1
            self.total_wait += seconds
            self.waits.append(seconds)

    def as_metadata(self) -> dict[str, Any]:
        """Plain values for Dagster metadata: attempts, retries, 429s, wait, statuses, errors."""
        with self._lock:
            return {
                "http_attempts": self.attempts,
                "http_retries": self.retries,
                "http_429s": self.rate_limited,
                "http_retry_wait_seconds": round(self.total_wait, 3),
                "http_retryable_statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "http_transport_errors": dict(sorted(self.errors.items())),
            }


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), else None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def is_retryable_exception(exc: BaseException) -> bool:
    """The exceptions the policy retries: retryable responses, timeouts, transport errors."""
    if isinstance(exc, RetryableHTTPError | httpx.TimeoutException):
        return True
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, _NEVER_RETRY_TRANSPORT)


def raise_for_retryable(
    response: httpx.Response,
    policy: RetryPolicy,
    retry_on: ResponsePredicate | None = None,
) -> httpx.Response:
    """Raise `RetryableHTTPError` if `response` should be retried, else return it unchanged.

    Non-retryable error statuses are returned too: the caller turns them into its own error.
    """
    if response.status_code in policy.retry_statuses:
        raise RetryableHTTPError(response, secret_url=policy.secret_url)
    if retry_on is not None and retry_on(response):
        raise RetryableHTTPError(
            response,
            reason=f"HTTP {response.status_code} (retryable)",
            secret_url=policy.secret_url,
        )
    return response


def backoff_wait(policy: RetryPolicy) -> tenacity.wait.wait_base:
    """The policy's backoff as a tenacity wait: the one mapping of `jitter` for every retry
    loop of the pipeline (HTTP calls, email sends, ledger commits)."""
    if policy.jitter == "full":
        return tenacity.wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait)
    if policy.jitter == "plus":
        return tenacity.wait_exponential_jitter(
            multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.initial_wait
        )
    return tenacity.wait_exponential(multiplier=policy.initial_wait, max=policy.max_wait)


def retrying_on(
    policy: RetryPolicy,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    *,
    sleep: Callable[[float], None] | None = None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """A sync tenacity `Retrying` for failures other than HTTP ones (email sends, database
    commits): retries `retry_on` only, at most `policy.max_attempts` attempts with the
    policy's backoff between them, and re-raises the last error."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts),
        wait=backoff_wait(policy),
        retry=tenacity.retry_if_exception_type(retry_on),
        reraise=True,
        sleep=sleep or tenacity.nap.sleep,
        before_sleep=before_sleep,
    )


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """Honour Retry-After when the failed attempt carries one; otherwise back off."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoff = backoff_wait(policy)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, RetryableHTTPError) and exc.retry_after is not None:
            return min(exc.retry_after, self.policy.max_retry_after)
        return self.backoff(retry_state)


def _hooks(
    policy: RetryPolicy, stats: RetryStats | None, log: logging.Logger
) -> dict[str, Callable[[tenacity.RetryCallState], None]]:
    def before(retry_state: tenacity.RetryCallState) -> None:
        if stats is not None:
            stats.record_attempt()

    def after(retry_state: tenacity.RetryCallState) -> None:
        # Called after every failed attempt that the policy retries, the last one included.
        if stats is not None and retry_state.outcome is not None:
            stats.record_failure(retry_state.outcome.exception())

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        wait = retry_state.upcoming_sleep
        if stats is not None:
            stats.record_sleep(wait)
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        log.warning(
            "HTTP retry %d/%d after %s; sleeping %.2fs",
            retry_state.attempt_number,
            policy.max_attempts - 1,
            _describe_failure(exc, policy.secret_url),
            wait,
        )

    return {"before": before, "after": after, "before_sleep": before_sleep}


def build_retrying(
    policy: RetryPolicy,
    *,
    stats: RetryStats | None = None,
    sleep: Callable[[float], None] | None = None,
    log: logging.Logger | None = None,
) -> tenacity.Retrying:
    """A tenacity `Retrying` for sync code. Use it as::

    for attempt in build_retrying(policy, stats=stats):
        with attempt:
            response = raise_for_retryable(client.get(url), policy)
    """
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts),
        wait=_WaitRetryAfterOrBackoff(policy),
        retry=tenacity.retry_if_exception(is_retryable_exception),
        reraise=True,
        sleep=sleep or tenacity.nap.sleep,
        **_hooks(policy, stats, log or logger),
    )


def build_async_retrying(
    policy: RetryPolicy,
    *,
    stats: RetryStats | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    log: logging.Logger | None = None,
) -> tenacity.AsyncRetrying:
    """A tenacity `AsyncRetrying` for async code (``async for attempt in ...``)."""
    kwargs: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts),
        wait=_WaitRetryAfterOrBackoff(policy),
        retry=tenacity.retry_if_exception(is_retryable_exception),
        reraise=True,
        **kwargs,
        **_hooks(policy, stats, log or logger),
    )


def send_with_retry(
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    policy: RetryPolicy,
    stats: RetryStats | None = None,
    retry_on: ResponsePredicate | None = None,
    sleep: Callable[[float], None] | None = None,
    **request_kwargs: Any,
) -> httpx.Response:
    """Send a request under the policy and return the final response.

    Returns any non-retryable response (2xx, but also 400/401/404...: check the status).
    Raises `RetryableHTTPError` (last response attached) or the last httpx error once the
    attempts are used up, and non-retryable httpx errors at once.
    """
    for attempt in build_retrying(policy, stats=stats, sleep=sleep):
        with attempt:
            response = client.request(method, url, **request_kwargs)
            raise_for_retryable(response, policy, retry_on)
    return response


def redact_url(url: str | httpx.URL) -> str:
    """Scheme and host (and port) only: the path and query of a webhook URL are its secret,
    and user info is a password."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unparseable URL)"
    if not parts.scheme or not host:
        return "(unparseable URL)"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    hidden = "/***" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{netloc}{hidden}"


class _SecretUrlFilter(logging.Filter):
    """httpx logs every request's full URL at INFO ("HTTP Request: POST https://..."): for
    the URLs registered as secret, the record shows `redact_url` instead."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.urls and isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(arg) if str(arg) in self.urls else arg for arg in record.args
            )
        return True


_secret_urls = _SecretUrlFilter()
logging.getLogger("httpx").addFilter(_secret_urls)


def register_secret_url(url: str) -> None:
    """Keep `url` (a webhook) out of httpx's own request log lines."""
    _secret_urls.urls.add(str(httpx.URL(url)))


def describe_error(exc: BaseException, url: str | httpx.URL | None = None) -> str:
    """A one-line account of a failed request that never repeats `url`'s path or query:
    httpx puts the full URL into some messages (HTTPStatusError, InvalidURL...)."""
    described = _describe_failure(exc, secret_url=True)
    if isinstance(exc, RetryableHTTPError):
        return described
    message = " ".join(str(exc).split())
    if url is not None:
        full = str(url)
        message = message.replace(full, redact_url(full))
        for secret in (urllib.parse.urlsplit(full).path, urllib.parse.urlsplit(full).query):
            if secret not in ("", "/"):
                message = message.replace(secret, "***")
    return f"{described}: {message}"[:500] if message else described


def _describe_request(response: httpx.Response, secret_url: bool = False) -> str:
    try:
        request = response.request
    except RuntimeError:
        return "HTTP request"
    return f"{request.method} {_shown_url(request.url, secret_url)}"


def _shown_url(url: httpx.URL, secret_url: bool) -> str:
    return redact_url(url) if secret_url else url.path


def _describe_failure(exc: BaseException | None, secret_url: bool = False) -> str:
    """Method, path (or only the host) and status or error class: never headers, query
    strings or bodies."""
    if isinstance(exc, RetryableHTTPError):
        return str(exc)
    if isinstance(exc, httpx.RequestError):
        try:
            request = exc.request
        except RuntimeError:
            return type(exc).__name__
        return f"{request.method} {_shown_url(request.url, secret_url)}: {type(exc).__name__}"
    return type(exc).__name__ if exc is not None else "unknown error"
