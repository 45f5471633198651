"""What can go wrong with an OpenRouter call, one class per way the caller must react.

`retryable` says whether a later run (an op retry) may succeed; `cost_usd` is what the failed
call's attempts cost (the bodies that reported ``usage.cost``), set by the client.
"""

from __future__ import annotations

from typing import Any


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
