"""A JSON webhook (Slack-style incoming webhook): POST a payload, retried by the project's
HTTP policy, with the URL's path treated as the secret it is.

The URL's path and query authenticate the caller (``/services/T0/B0/XXXX``), so no log line,
error message or repr of this client shows more than its scheme and host (`redact_url`).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from prediction_pipeline.clients.http_retry import (
    RetryableHTTPError,
    RetryPolicy,
    describe_error,
    redact_url,
    register_secret_url,
    send_with_retry,
)

#: Within one delivery, a few quick HTTP retries for blips (429, 5xx, dropped connections).
DEFAULT_POLICY = RetryPolicy(max_attempts=3, initial_wait=0.5, max_wait=5, secret_url=True)
DEFAULT_TIMEOUT_SECONDS = 10.0


class WebhookDeliveryError(Exception):
    """The webhook did not take the payload; the message names only the webhook's host."""


class WebhookClient:
    def __init__(
        self,
        url: str,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not policy.secret_url:
            # The path is the secret: a policy that logs it would leak the webhook.
            policy = policy.model_copy(update={"secret_url": True})
        self._url = url
        self._policy = policy
        self._timeout = timeout
        self._sleep = sleep  # tests pass a no-op to skip the backoff pauses
        register_secret_url(url)  # httpx's own request log shows the URL: filter it

    def __repr__(self) -> str:
        return f"WebhookClient({redact_url(self._url)!r})"

    def describe(self) -> str:
        return redact_url(self._url)

    def post(self, payload: dict) -> None:
        """POST `payload` as JSON; raises `WebhookDeliveryError` (URL redacted) unless a 2xx
        comes back within the policy's attempts."""
        try:
            with httpx.Client(timeout=self._timeout) as client:
                response = send_with_retry(
                    client, "POST", self._url, policy=self._policy, sleep=self._sleep, json=payload
                )
        except (httpx.HTTPError, RetryableHTTPError, ValueError) as exc:
            # httpx errors may embed the full URL: only a redacted account leaves this method.
            raise WebhookDeliveryError(describe_error(exc, self._url)) from None
        if not response.is_success:
            raise WebhookDeliveryError(f"POST {redact_url(self._url)}: HTTP {response.status_code}")
