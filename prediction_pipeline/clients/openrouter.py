"""OpenRouter chat completions, and the forecaster that turns them into validated forecasts.

`OpenRouterClient.complete` sends one ``POST {base}/api/v1/chat/completions`` under the shared
retry policy (`clients.http_retry`), each HTTP attempt inside the model's `ModelLimiter` when
one is given (so a call sleeping between retries holds no in-flight slot):

- retried: 408, 429, 5xx, timeouts, dropped connections, 402 whose
  ``error.metadata.reason == "in_flight_budget_exhausted"``, and errors inside an HTTP 200
  body (an ``error`` member, ``choices[0].finish_reason == "error"``, no choices, or a body
  that is not JSON), which count as a 502. A 429 also pauses the limiter for its Retry-After
  (or `rate_limit_cooldown` without one), so the whole model backs off;
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

`OpenRouterForecaster.forecast` builds the messages (`core.prompts`), asks with the strict JSON
schema, and validates the answer with `core.forecast.parse_forecast`; an invalid answer
(not JSON, out of range, truncated, empty) is re-asked up to `max_attempts` times in all and
then raises `ForecastAttemptsExhausted` (an `InvalidForecast`): never a guessed forecast.
"""

from __future__ import annotations

import contextlib
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
from prediction_pipeline.clients.rate_limit import ModelLimiter
from prediction_pipeline.core.forecast import (
    CONFIDENCE_VALUES,
    ForecastOutput,
    ForecastResult,
    InvalidForecast,
    MarketContext,
    forecast_json_schema,
    parse_forecast,
)
from prediction_pipeline.core.prompts import build_messages

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
IN_FLIGHT_BUDGET_EXHAUSTED = "in_flight_budget_exhausted"
_REDACTED = "[redacted]"


# -- errors --------------------------------------------------------------------------------


class OpenRouterError(RuntimeError):
    """OpenRouter could not give an answer. `status` is the HTTP status when there was one."""

    retryable = False  # whether a later run (op retry) may succeed
    cost_usd = 0.0  # what the failed call's attempts cost (bodies that reported usage.cost)

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: Any = None,
        model: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.model = model
        super().__init__(message)


class OpenRouterBadRequestError(OpenRouterError):
    """400 (or another non-retryable 4xx): the request itself is wrong (invalid model id,
    unsupported parameter, no provider supporting `response_format`...)."""


class OpenRouterAuthError(OpenRouterError):
    """401: the API key is missing, invalid or disabled."""


class OpenRouterCreditsError(OpenRouterError):
    """402: the account is out of credits (not the retryable in-flight budget case)."""


class OpenRouterForbiddenError(OpenRouterError):
    """403: the input was flagged by moderation, or the key may not use this model."""


class OpenRouterUnavailableError(OpenRouterError):
    """Retryable failures (429, 5xx, timeouts, errors in 200 bodies) outlasted the attempts."""

    retryable = True


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One chat completion: the answer text and what it cost."""

    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    # `usage.cost` summed over the call's attempts that reported one, failed ones included
    # (None when none did)
    cost_usd: float | None
    latency_ms: float  # the successful HTTP exchange, without limiter waits and retries
    model: str  # the model that answered (as OpenRouter reports it)
    generation_id: str | None = None
    provider: str | None = None
    refusal: str | None = None
    web_search: bool = False  # the web plugin was requested
    http_attempts: int = 1  # HTTP attempts this call took (1 = no retry)
    rate_limited: int = 0  # 429s seen by this call

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


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
        data = _json(response)
        usage = data.get("usage") if isinstance(data, dict) else None
        cost = usage.get("cost") if isinstance(usage, dict) else None
        try:
            value = float(cost) if cost is not None else None
        except (TypeError, ValueError):
            value = None
        if value is not None and value >= 0:
            self.total += value
            self.reported = True

    @property
    def cost_usd(self) -> float | None:
        return self.total if self.reported else None


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


# -- the client ----------------------------------------------------------------------------


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
        policy = self.retry_policy
        attempts = 0
        rate_limited = 0
        try:
            async for attempt in build_async_retrying(
                policy, stats=stats if stats is not None else self.stats, sleep=self._sleep
            ):
                with attempt:
                    attempts += 1
                    started = time.perf_counter()
                    if limiter is not None:
                        async with limiter:
                            started = time.perf_counter()
                            paid.sent += 1
                            response = await self._post(body)
                    else:
                        paid.sent += 1
                        response = await self._post(body)
                    latency_ms = (time.perf_counter() - started) * 1000.0
                    paid.add(response)
                    if response.status_code == 429:
                        rate_limited += 1
                        if limiter is not None:
                            limiter.pause(self._cooldown(response))
                    raise_for_retryable(response, policy, _retryable_openrouter_response)
                    if response.status_code >= 300:  # httpx follows no redirects
                        raise self._fail_fast_error(response, model)
                    data = _body_or_retry(response)
        except RetryableHTTPError as exc:
            raise OpenRouterUnavailableError(
                self._scrub(
                    f"OpenRouter {model}: {exc.reason} after {attempts} attempt(s)"
                    f"{_error_detail(exc.response)}"
                ),
                status=exc.status_code,
                model=model,
            ) from None
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            # Our own mistake (a base_url without http(s)://, a malformed request): no retry
            # can fix it, and neither can a later run.
            raise OpenRouterError(
                self._scrub(f"OpenRouter {model}: cannot send the request: {exc}"), model=model
            ) from None
        except httpx.TimeoutException as exc:
            raise OpenRouterUnavailableError(
                f"OpenRouter {model}: timed out ({type(exc).__name__}, timeout "
                f"{self.timeout}s) after {attempts} attempt(s)",
                model=model,
            ) from None
        except httpx.TransportError as exc:
            raise OpenRouterUnavailableError(
                self._scrub(
                    f"OpenRouter {model}: {type(exc).__name__} ({exc}) after {attempts} attempt(s)"
                ),
                model=model,
            ) from None
        return _completion(
            data,
            model=model,
            cost_usd=paid.cost_usd,
            latency_ms=latency_ms,
            web_search=web_search,
            http_attempts=attempts,
            rate_limited=rate_limited,
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
        error = _error_member(response)
        code = error.get("code") if error else None
        detail = _error_detail(response)
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


# -- response handling ---------------------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_member(response: httpx.Response) -> dict[str, Any] | None:
    data = _json(response)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"]
    return None


def _error_detail(response: httpx.Response) -> str:
    """': <message> [<metadata>]' from an OpenRouter error body, else a short body excerpt."""
    error = _error_member(response)
    if error is None:
        text = response.text.strip()
        return f": {text[:200]!r}" if text else ""
    parts = [str(error.get("message") or "").strip()[:300]]
    metadata = error.get("metadata")
    if isinstance(metadata, dict):
        keep = {
            k: metadata[k]
            for k in ("reason", "reasons", "provider_name", "flagged_input", "model_slug")
            if k in metadata
        }
        if keep:
            parts.append(str(keep)[:300])
    text = " ".join(p for p in parts if p)
    return f": {text}" if text else ""


def _retryable_openrouter_response(response: httpx.Response) -> bool:
    """Retryable beyond the policy's statuses: 408, and 402 for the in-flight budget."""
    if response.status_code == 408:
        return True
    if response.status_code == 402:
        error = _error_member(response) or {}
        metadata = error.get("metadata")
        return isinstance(metadata, dict) and metadata.get("reason") == IN_FLIGHT_BUDGET_EXHAUSTED
    return False


def _as_bad_gateway(response: httpx.Response, reason: str) -> RetryableHTTPError:
    """A failed attempt hidden in a 2xx body, counted as the 502 it really is."""
    headers = {
        name: response.headers[name]
        for name in ("Retry-After", "Content-Type")
        if name in response.headers
    }
    fake = httpx.Response(502, headers=headers, content=response.content)
    with contextlib.suppress(RuntimeError):  # a response built without a request
        fake.request = response.request
    return RetryableHTTPError(fake, reason=f"HTTP {response.status_code} with {reason}")


def _body_or_retry(response: httpx.Response) -> dict[str, Any]:
    """The decoded 2xx body, or `RetryableHTTPError` when it carries an error."""
    data = _json(response)
    if not isinstance(data, dict):
        raise _as_bad_gateway(response, "a body that is not a JSON object")
    error = data.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        raise _as_bad_gateway(response, f"an error in the body: {str(message)[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _as_bad_gateway(response, "no choices")
    choice = choices[0]
    if choice.get("finish_reason") == "error" or choice.get("error"):
        choice_error = choice.get("error")
        message = choice_error.get("message") if isinstance(choice_error, dict) else choice_error
        raise _as_bad_gateway(response, f"finish_reason 'error': {str(message or '')[:200]}")
    return data


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        texts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    return str(content)


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


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


def _completion(
    data: dict[str, Any],
    *,
    model: str,
    cost_usd: float | None,
    latency_ms: float,
    web_search: bool,
    http_attempts: int,
    rate_limited: int,
) -> Completion:
    choice = data["choices"][0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    refusal = message.get("refusal")
    return Completion(
        content=_text(message.get("content")),
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        model=str(data.get("model") or model),
        generation_id=data.get("id"),
        provider=data.get("provider"),
        refusal=refusal if isinstance(refusal, str) and refusal else None,
        web_search=web_search,
        http_attempts=http_attempts,
        rate_limited=rate_limited,
    )


# -- the forecaster ------------------------------------------------------------------------


class ForecastAttemptsExhausted(InvalidForecast):
    """Every attempt gave an invalid answer. Carries what the attempts cost."""

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        last_error: str,
    ) -> None:
        self.attempts = attempts
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cost_usd = cost_usd
        self.last_error = last_error
        super().__init__(message)


class OpenRouterForecaster:
    """Forecasts one market with one OpenRouter model (`slug`, e.g. ``openai/gpt-4o``)."""

    def __init__(
        self,
        client: OpenRouterClient,
        slug: str,
        *,
        show_market_price: bool = False,
        max_attempts: int = 2,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        limiter: ModelLimiter | None = None,
    ) -> None:
        """`max_attempts` counts every ask, the first included (an invalid answer is re-asked
        since a second try often succeeds); `limiter` overrides the client's for this model."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.client = client
        self.slug = slug
        self.show_market_price = show_market_price
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens
        self.limiter = limiter

    def __repr__(self) -> str:
        return (
            f"OpenRouterForecaster({self.slug!r}, show_market_price={self.show_market_price}, "
            f"max_attempts={self.max_attempts})"
        )

    def messages(self, ctx: MarketContext) -> list[dict]:
        return build_messages(ctx, show_market_price=self.show_market_price, research=ctx.research)

    async def forecast(
        self,
        ctx: MarketContext,
        *,
        web_search: bool = False,
        stats: RetryStats | None = None,
        spend: SpendHook | None = None,
    ) -> ForecastResult:
        """A validated forecast, or `ForecastAttemptsExhausted` (an `InvalidForecast`) after
        `max_attempts` invalid answers; other errors (`OpenRouterError`, the spend hook's
        refusal) propagate with `cost_usd` set to what the attempts before them cost.

        Tokens, cost and latency are summed over every attempt (each one was paid for); each
        attempt is one `complete` call, reserved and recorded through `spend`.
        """
        messages = self.messages(ctx)
        prompt_tokens = completion_tokens = 0
        cost_usd = 0.0
        latency_ms = 0.0
        rate_limited = 0
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                completion = await self.client.complete(
                    self.slug,
                    messages,
                    web_search=web_search,
                    response_format=forecast_json_schema(),
                    max_tokens=self.max_tokens,
                    stats=stats,
                    limiter=self.limiter,
                    spend=spend,
                )
            except Exception as exc:  # the invalid answers before it were paid for
                exc.cost_usd = getattr(exc, "cost_usd", 0.0) + cost_usd
                raise
            prompt_tokens += completion.prompt_tokens
            completion_tokens += completion.completion_tokens
            cost_usd += completion.cost_usd or 0.0
            latency_ms += completion.latency_ms
            rate_limited += completion.rate_limited
            try:
                output = _validated(completion, self.max_tokens)
            except InvalidForecast as exc:
                last_error = str(exc)
                logger.warning(
                    "OpenRouter %s: invalid answer for market %s (attempt %d/%d): %s",
                    self.slug,
                    ctx.market_id,
                    attempt,
                    self.max_attempts,
                    last_error[:300],
                )
                continue
            return ForecastResult(
                probability=output.probability,
                confidence=CONFIDENCE_VALUES[output.confidence],
                rationale=output.rationale,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost_usd,
                latency_ms=latency_ms,
                web_search_used=web_search,
                attempts=attempt,
                rate_limited=rate_limited,
            )
        raise ForecastAttemptsExhausted(
            f"{self.slug}: no valid forecast for market {ctx.market_id} after "
            f"{self.max_attempts} attempt(s): {last_error}",
            attempts=self.max_attempts,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            last_error=last_error,
        )


def _validated(completion: Completion, max_tokens: int) -> ForecastOutput:
    if completion.truncated:
        raise InvalidForecast(
            f"answer truncated (finish_reason 'length', {completion.completion_tokens} "
            f"completion tokens, max_tokens {max_tokens})"
        )
    if completion.refusal and not (completion.content or "").strip():
        raise InvalidForecast(f"the model refused: {completion.refusal[:200]!r}")
    return parse_forecast(completion.content)
