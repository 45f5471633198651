"""Reading OpenRouter's answers: error bodies, errors hidden in 200 bodies, the completion.

OpenRouter reports errors as ``{"error": {"code", "message", "metadata"}}``, and can report
one inside an HTTP 200 body too (an ``error`` member, ``choices[0].finish_reason == "error"``,
no choices, or a body that is not JSON): `body_or_retry` turns those into the 502 they really
are, so the shared retry policy retries them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import httpx

from prediction_pipeline.clients.http_retry import RetryableHTTPError

IN_FLIGHT_BUDGET_EXHAUSTED = "in_flight_budget_exhausted"


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


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_member(response: httpx.Response) -> dict[str, Any] | None:
    data = json_body(response)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"]
    return None


def error_detail(response: httpx.Response) -> str:
    """': <message> [<metadata>]' from an OpenRouter error body, else a short body excerpt."""
    error = error_member(response)
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


def is_retryable_response(response: httpx.Response) -> bool:
    """Retryable beyond the policy's statuses: 408, and 402 for the in-flight budget."""
    if response.status_code == 408:
        return True
    if response.status_code == 402:
        error = error_member(response) or {}
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


def body_or_retry(response: httpx.Response) -> dict[str, Any]:
    """The decoded 2xx body, or `RetryableHTTPError` when it carries an error."""
    data = json_body(response)
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


def completion_from_body(
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


def usage_cost(response: httpx.Response) -> float | None:
    """The ``usage.cost`` a body reports (what this attempt was billed), if any."""
    data = json_body(response)
    usage = data.get("usage") if isinstance(data, dict) else None
    cost = usage.get("cost") if isinstance(usage, dict) else None
    try:
        value = float(cost) if cost is not None else None
    except (TypeError, ValueError):
        value = None
    return value if value is not None and value >= 0 else None
