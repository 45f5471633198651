"""The OpenRouter chat completions client: transport, retries, rate limits and spend.

`OpenRouterClient.complete` sends one ``POST {base}/api/v1/chat/completions`` under the shared
retry policy (`clients.http_retry`), each HTTP attempt inside the model's `ModelLimiter` when
one is given (so a call sleeping between retries holds no in-flight slot):

- retried: 408, 429, 5xx, timeouts, dropped connections, 402 whose
  ``error.metadata.reason == "in_flight_budget_exhausted"``, and errors inside an HTTP 200
  body (`parsing.body_or_retry`), which count as a 502. A 429 also pauses the limiter for its
  Retry-After (or `rate_limit_cooldown` without one), so the whole model backs off;
- fail fast: 400 (`OpenRouterBadRequestError`, with OpenRouter's reason), 401
  (`OpenRouterAuthError`), 402 (`OpenRouterCreditsError`), 403 (`OpenRouterForbiddenError`,
  e.g. moderation), any other 4xx or a 3xx (`OpenRouterBadRequestError`), a base URL httpx
  cannot use (`OpenRouterError`);
- once the attempts are used up: `OpenRouterUnavailableError` (last status or error kept);
- a truncated answer (``finish_reason == "length"``) is *returned* (`Completion.truncated`):
  it is not an HTTP failure, and the caller decides (the forecaster re-asks, then gives up).

Cost: every attempt whose body reports ``usage.cost`` (an invalid answer, an error inside a
200 body) is paid for, so `Completion.cost_usd` sums them all, and an `OpenRouterError` carries
`cost_usd` too. With a `SpendHook`, each call reserves before it is sent and settles what it
cost afterwards (released when nothing was sent; settled at its estimate when cancelled
mid-flight, since the provider may bill it).

The API key lives in an `httpx.Auth` that hides it from every repr; error messages are
scrubbed of it and logs carry only method, path, status and model.

One module (over 400 lines) on purpose: one call's retries, rate limit and spend
accounting interleave, and read in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio._backends._asyncio  # noqa: F401  (see below)
import httpcore._async.http11  # noqa: F401
import httpx

from prediction_pipeline.clients.http_retry import (
    RetryableHTTPError,
    RetryPolicy,
    RetryStats,
    build_async_retrying,
    parse_retry_after,
    raise_for_retryable,
)
from prediction_pipeline.clients.openrouter.errors import (
    OpenRouterAuthError,
    OpenRouterBadRequestError,
    OpenRouterCreditsError,
    OpenRouterError,
    OpenRouterForbiddenError,
    OpenRouterUnavailableError,
)
from prediction_pipeline.clients.openrouter.parsing import (
    Completion,
    body_or_retry,
    completion_from_body,
    error_detail,
    error_member,
    is_retryable_response,
    usage_cost,
)
from prediction_pipeline.clients.rate_limit import ModelLimiter

# httpx imports its transport (httpcore, h11, anyio's asyncio backend) on a process's first
# request. Imported here instead, so that the first call leaves at its rate-limit slot rather
# than tens of milliseconds late: a late call makes the next one, sent on time, reach a
# provider that allows no burst too early (a 429).

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://openrouter.ai"
CHAT_COMPLETIONS_PATH = "/api/v1/chat/completions"
DEFAULT_TIMEOUT_SECONDS = 120.0
DEFAULT_APP_URL = "http://localhost/prediction-pipeline"  # OpenRouter app attribution
DEFAULT_APP_TITLE = "prediction-pipeline"
DEFAULT_MAX_TOKENS = 2000
DEFAULT_RATE_LIMIT_COOLDOWN = 1.0
_REDACTED = "[redacted]"


class SpendHook(Protocol):
    """Reserves spend before a call and records what it cost (services.spend.SpendGuard)."""

    async def reserve(self, *, web_search: bool) -> Any: ...

    async def settle(self, ticket: Any, cost_usd: float | None) -> None: ...

    async def release(self, ticket: Any) -> None: ...


class _PaidAttempts:
    """What the attempts of one call were billed (the ``usage.cost`` their bodies report)."""

    def __init__(self) -> None:
        self.sent = 0
        self.total = 0.0
        self.reported = False

    def add(self, response: httpx.Response) -> None:
        value = usage_cost(response)
        if value is not None:
            self.total += value
            self.reported = True

    @property
    def cost_usd(self) -> float | None:
        return self.total if self.reported else None


@dataclass
class _CallTally:
    """What one call's HTTP attempts saw, for its `Completion` and its error messages."""

    attempts: int = 0
    rate_limited: int = 0
    latency_ms: float = 0.0


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>``; its repr never shows the key."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        yield request

    def scrub(self, text: str) -> str:
        return text.replace(self._api_key, _REDACTED) if self._api_key else text

    def __repr__(self) -> str:
        return f"_BearerAuth({_REDACTED})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("the OpenRouter credentials are not picklable")


class OpenRouterClient:
    """Async OpenRouter client over `httpx.AsyncClient`. Use ``async with`` or `aclose()`."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry_policy: RetryPolicy | None = None,
        stats: RetryStats | None = None,
        limiter: ModelLimiter | None = None,
        rate_limit_cooldown: float = DEFAULT_RATE_LIMIT_COOLDOWN,
        app_url: str = DEFAULT_APP_URL,
        app_title: str = DEFAULT_APP_TITLE,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """`limiter` applies to every call unless `complete(limiter=...)` overrides it (one
        client, one limiter per model). `http_client` replaces the client built from
        `base_url`/`timeout` (the caller then owns it; requests still go to `base_url`).
        `sleep` replaces `asyncio.sleep` between retries (tests)."""
        if not api_key or not api_key.strip():
            raise OpenRouterAuthError(
                "OpenRouter API key is missing: set OPENROUTER_API_KEY", status=None
            )
        if rate_limit_cooldown < 0:
            raise ValueError("rate_limit_cooldown must be >= 0")
        self._auth = _BearerAuth(api_key.strip())
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}{CHAT_COMPLETIONS_PATH}"
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self.stats = stats if stats is not None else RetryStats()
        self.limiter = limiter
        self.rate_limit_cooldown = rate_limit_cooldown
        self._sleep = sleep
        self._owns_client = http_client is None
        self._http = http_client or httpx.AsyncClient(
            timeout=timeout,
            headers={
                "Accept": "application/json",
                "User-Agent": "prediction-pipeline",
                "HTTP-Referer": app_url,
                "X-Title": app_title,
            },
        )

    def __repr__(self) -> str:
        return (
            f"OpenRouterClient(base_url={self.base_url!r}, api_key={_REDACTED}, "
            f"timeout={self.timeout!r})"
        )

    __str__ = __repr__

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("OpenRouterClient holds credentials and a connection pool: not picklable")

    async def __aenter__(self) -> OpenRouterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    # -- requests -----------------------------------------------------------------------

    @staticmethod
    def request_body(
        model: str,
        messages: list[dict],
        *,
        web_search: bool,
        response_format: dict | None,
        max_tokens: int,
    ) -> dict[str, Any]:
        """The JSON body of one chat completion request."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            # Only providers that honour every parameter (the strict schema above all).
            "provider": {"require_parameters": True},
            "usage": {"include": True},  # usage accounting: tokens and `cost` in the answer
        }
        if response_format is not None:
            body["response_format"] = response_format
        if web_search:
            body["plugins"] = [{"id": "web"}]
        return body

    async def complete(
        self,
        model: str,
        messages: list[dict],
        *,
        web_search: bool = False,
        response_format: dict | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        stats: RetryStats | None = None,
        limiter: ModelLimiter | None = None,
        spend: SpendHook | None = None,
    ) -> Completion:
        """One chat completion under the retry policy (see the module docstring).

        `stats` (else the client's own) counts HTTP attempts, retries and 429s; `limiter`
        (else the client's) is held around each HTTP attempt and paused on 429; `spend`
        reserves before the call (its refusal propagates, nothing sent) and records the cost.
        """
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        body = self.request_body(
            model,
            messages,
            web_search=web_search,
            response_format=response_format,
            max_tokens=max_tokens,
        )
        limiter = limiter if limiter is not None else self.limiter
        ticket = await spend.reserve(web_search=web_search) if spend is not None else None
        paid = _PaidAttempts()
        try:
            completion = await self._complete(model, body, web_search, stats, limiter, paid)
        except BaseException as exc:
            if isinstance(exc, OpenRouterError):
                exc.cost_usd = paid.total
            if spend is not None:
                await _close_ticket(spend, ticket, paid, cancelled=not isinstance(exc, Exception))
            raise
        if spend is not None:
            await spend.settle(ticket, completion.cost_usd)
        return completion

    async def _complete(
        self,
        model: str,
        body: dict[str, Any],
        web_search: bool,
        stats: RetryStats | None,
        limiter: ModelLimiter | None,
        paid: _PaidAttempts,
    ) -> Completion:
        tally = _CallTally()
        try:
            async for attempt in build_async_retrying(
                self.retry_policy,
                stats=stats if stats is not None else self.stats,
                sleep=self._sleep,
            ):
                with attempt:
                    data = await self._attempt(model, body, limiter, paid, tally)
        except (RetryableHTTPError, httpx.TransportError) as exc:
            raise self._final_error(exc, model, tally.attempts) from None
        return completion_from_body(
            data,
            model=model,
            cost_usd=paid.cost_usd,
            latency_ms=tally.latency_ms,
            web_search=web_search,
            http_attempts=tally.attempts,
            rate_limited=tally.rate_limited,
        )

    async def _attempt(
        self,
        model: str,
        body: dict[str, Any],
        limiter: ModelLimiter | None,
        paid: _PaidAttempts,
        tally: _CallTally,
    ) -> dict[str, Any]:
        """One HTTP attempt: the decoded body, or an exception for the retry policy."""
        tally.attempts += 1
        started = time.perf_counter()
        if limiter is not None:
            async with limiter:
                started = time.perf_counter()
                paid.sent += 1
                response = await self._post(body)
        else:
            paid.sent += 1
            response = await self._post(body)
        tally.latency_ms = (time.perf_counter() - started) * 1000.0
        paid.add(response)
        if response.status_code == 429:
            tally.rate_limited += 1
            if limiter is not None:
                limiter.pause(self._cooldown(response))
        raise_for_retryable(response, self.retry_policy, is_retryable_response)
        if response.status_code >= 300:  # httpx follows no redirects
            raise self._fail_fast_error(response, model)
        return body_or_retry(response)

    def _final_error(self, exc: Exception, model: str, attempts: int) -> OpenRouterError:
        """The error a call raises once the retry policy gives up on `exc` (or never
        retries it)."""
        if isinstance(exc, RetryableHTTPError):
            return OpenRouterUnavailableError(
                self._scrub(
                    f"OpenRouter {model}: {exc.reason} after {attempts} attempt(s)"
                    f"{error_detail(exc.response)}"
                ),
                status=exc.status_code,
                model=model,
            )
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            # Our own mistake (a base_url without http(s)://, a malformed request): no retry
            # can fix it, and neither can a later run.
            return OpenRouterError(
                self._scrub(f"OpenRouter {model}: cannot send the request: {exc}"), model=model
            )
        if isinstance(exc, httpx.TimeoutException):
            return OpenRouterUnavailableError(
                f"OpenRouter {model}: timed out ({type(exc).__name__}, timeout "
                f"{self.timeout}s) after {attempts} attempt(s)",
                model=model,
            )
        return OpenRouterUnavailableError(
            self._scrub(
                f"OpenRouter {model}: {type(exc).__name__} ({exc}) after {attempts} attempt(s)"
            ),
            model=model,
        )

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        return await self._http.post(self.url, json=body, auth=self._auth)

    def _cooldown(self, response: httpx.Response) -> float:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            return self.rate_limit_cooldown
        return min(retry_after, self.retry_policy.max_retry_after)

    def _scrub(self, text: str) -> str:
        return self._auth.scrub(text)

    def _fail_fast_error(self, response: httpx.Response, model: str) -> OpenRouterError:
        status = response.status_code
        error = error_member(response)
        code = error.get("code") if error else None
        detail = error_detail(response)
        if status == 401:
            message = (
                f"OpenRouter {model}: HTTP 401, the API key is invalid, disabled or missing "
                f"(check OPENROUTER_API_KEY){detail}"
            )
            cls: type[OpenRouterError] = OpenRouterAuthError
        elif status == 402:
            message = (
                f"OpenRouter {model}: HTTP 402, out of credits (add credits or raise the "
                f"key's limit){detail}"
            )
            cls = OpenRouterCreditsError
        elif status == 403:
            message = f"OpenRouter {model}: HTTP 403, forbidden (moderation or access){detail}"
            cls = OpenRouterForbiddenError
        elif status < 400:
            message = f"OpenRouter {model}: unexpected HTTP {status} redirect (check base_url)"
            cls = OpenRouterBadRequestError
        else:
            what = "bad request" if status == 400 else "request rejected"
            message = f"OpenRouter {model}: HTTP {status}, {what}{detail}"
            cls = OpenRouterBadRequestError
        return cls(self._scrub(message), status=status, code=code, model=model)


async def _close_ticket(
    spend: SpendHook, ticket: Any, paid: _PaidAttempts, *, cancelled: bool
) -> None:
    """Record a call that ended without an answer: released when nothing was sent, at its
    estimate when cancelled in flight (the provider may still bill it), else at what the
    failed attempts' bodies reported (failed HTTP calls are not billed otherwise)."""
    if paid.sent == 0:
        await spend.release(ticket)
    elif cancelled and not paid.reported:
        await spend.settle(ticket, None)
    else:
        await spend.settle(ticket, paid.total)
