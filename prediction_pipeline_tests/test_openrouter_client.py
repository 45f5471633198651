"""OpenRouterClient and OpenRouterForecaster against a fake OpenRouter on a real loopback socket.

Backoff waits are a millisecond at most, so the file runs in a few seconds. Nothing here
asserts wall-clock durations: waits are checked through `RetryStats`, the limiter's recorded
pauses and the order of the limiter's own events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from prediction_pipeline.clients.http_retry import RetryPolicy, RetryStats
from prediction_pipeline.clients.openrouter import (
    Completion,
    OpenRouterAuthError,
    OpenRouterBadRequestError,
    OpenRouterClient,
    OpenRouterCreditsError,
    OpenRouterError,
    OpenRouterForbiddenError,
    OpenRouterUnavailableError,
)
from prediction_pipeline.clients.rate_limit import ModelLimiter
from prediction_pipeline.core.forecast import (
    CONFIDENCE_VALUES,
    ForecastResult,
    InvalidForecast,
    MarketContext,
    forecast_json_schema,
)
from prediction_pipeline.core.prompts import build_messages
from prediction_pipeline.services.forecasters import (
    ForecastAttemptsExhausted,
    OpenRouterForecaster,
)
from prediction_pipeline_tests.fakes.openrouter_server import (
    CHAT_COMPLETIONS_PATH,
    Behaviour,
    FakeOpenRouterServer,
    Fault,
    answer_for,
)

KEY = "sk-or-v1-0123456789abcdef-test-key-do-not-log"
MODEL = "openai/gpt-4o"
FAST = RetryPolicy(max_attempts=4, initial_wait=0.001, max_wait=0.001, max_retry_after=5.0)
CTX = MarketContext(
    market_id=42,
    source_id="0x2a",
    question="Will the Riverton bridge reopen before 2027?",
    description="Resolves Yes if the bridge carries traffic before 1 January 2027.",
    category="Infrastructure",
    end_date=dt.datetime(2026, 12, 31, tzinfo=dt.UTC),
    day=dt.date(2026, 11, 2),
    market_price=0.437,
)


@pytest.fixture
def server() -> Iterator[FakeOpenRouterServer]:
    with FakeOpenRouterServer(api_key=KEY) as fake:
        yield fake


def _client(server: FakeOpenRouterServer, **kwargs) -> OpenRouterClient:
    options = {
        "base_url": server.base_url,
        "timeout": 5.0,
        "retry_policy": FAST,
        "rate_limit_cooldown": 0.001,
    }
    options.update(kwargs)
    return OpenRouterClient(options.pop("api_key", KEY), **options)


def forecast(
    server: FakeOpenRouterServer,
    ctx: MarketContext = CTX,
    *,
    web_search: bool = False,
    stats: RetryStats | None = None,
    limiter: ModelLimiter | None = None,
    max_attempts: int = 2,
    show_market_price: bool = False,
    **client_kwargs,
) -> ForecastResult:
    async def main() -> ForecastResult:
        async with _client(server, **client_kwargs) as client:
            forecaster = OpenRouterForecaster(
                client,
                MODEL,
                show_market_price=show_market_price,
                max_attempts=max_attempts,
                limiter=limiter,
            )
            return await forecaster.forecast(ctx, web_search=web_search, stats=stats)

    return asyncio.run(main())


def expected(ctx: MarketContext = CTX) -> dict:
    return answer_for(MODEL, build_messages(ctx))


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line of every logger (httpx and httpcore included), at DEBUG."""
    lines: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    root = logging.getLogger()
    handler = Handler(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# -- the success path ----------------------------------------------------------------------


def test_success_sends_the_documented_request(server: FakeOpenRouterServer) -> None:
    stats = RetryStats()
    result = forecast(server, stats=stats)

    answer = expected()
    assert result.probability == answer["probability"]
    assert result.confidence == CONFIDENCE_VALUES[answer["confidence"]]
    assert result.rationale == answer["rationale"]
    assert result.attempts == 1
    assert result.rate_limited == 0
    assert result.web_search_used is False
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.cost_usd == pytest.approx(server.total_cost)
    assert result.cost_usd > 0
    assert result.latency_ms > 0
    assert stats.attempts == 1 and stats.retries == 0

    [request] = server.requests
    assert request.method == "POST"
    assert request.path == CHAT_COMPLETIONS_PATH
    assert request.auth_ok is True  # Authorization: Bearer <the key>
    assert request.header("authorization") == "Bearer [redacted]"
    assert request.header("http-referer")
    assert request.header("x-title") == "prediction-pipeline"
    body = request.body
    assert body["model"] == MODEL
    # The fence is random per call: compare the messages with it blanked out.
    fenceless = re.compile(r"-[0-9a-f]{32}>")
    sent, built = json.dumps(body["messages"]), json.dumps(build_messages(CTX))
    assert fenceless.sub(">", sent) == fenceless.sub(">", built)
    assert body["response_format"] == forecast_json_schema()
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["provider"] == {"require_parameters": True}
    assert body["usage"] == {"include": True}
    assert body["max_tokens"] > 0
    assert "plugins" not in body
    # The market price is not shown unless asked for.
    assert "0.437" not in body["messages"][1]["content"]


def test_web_search_sends_the_web_plugin(server: FakeOpenRouterServer) -> None:
    result = forecast(server, web_search=True)

    assert server.requests[0].body["plugins"] == [{"id": "web"}]
    assert result.web_search_used is True
    assert result.cost_usd == pytest.approx(server.total_cost)
    assert result.cost_usd >= server.web_search_price


def test_market_price_is_sent_when_the_forecaster_shows_it(server: FakeOpenRouterServer) -> None:
    forecast(server, show_market_price=True)
    assert "0.437" in server.requests[0].body["messages"][1]["content"]


def test_complete_returns_the_completion(server: FakeOpenRouterServer) -> None:
    async def main() -> Completion:
        async with _client(server) as client:
            return await client.complete(
                MODEL, [{"role": "user", "content": "Question: hello?"}], max_tokens=50
            )

    completion = asyncio.run(main())
    assert completion.finish_reason == "stop"
    assert completion.truncated is False
    assert completion.model == MODEL
    assert completion.provider == "FakeProvider"
    assert completion.generation_id and completion.generation_id.startswith("gen-")
    assert completion.cost_usd == pytest.approx(server.total_cost)
    assert completion.http_attempts == 1
    body = server.requests[0].body
    assert "response_format" not in body
    assert body["max_tokens"] == 50


# -- retried failures ----------------------------------------------------------------------


class RecordingLimiter(ModelLimiter):
    """Records, on the loop's own clock, each acquisition and each cooldown it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, float]] = []

    async def acquire(self) -> None:
        await super().acquire()
        self.events.append(("acquired", asyncio.get_running_loop().time()))

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        self.events.append(("paused_until", self.paused_until))


def test_429_with_retry_after_pauses_the_limiter_then_succeeds(
    server: FakeOpenRouterServer,
) -> None:
    server.enqueue(Behaviour(Fault.RATE_LIMITED, retry_after=0.05))
    limiter = RecordingLimiter(requests_per_second=100, max_in_flight=2)
    stats = RetryStats()

    result = forecast(server, stats=stats, limiter=limiter)

    assert result.probability == expected()["probability"]
    assert result.rate_limited == 1
    assert result.attempts == 1  # one forecast attempt, two HTTP attempts
    assert stats.rate_limited == 1
    assert stats.attempts == 2
    assert stats.waits == [0.05]  # Retry-After honoured by the retry policy
    assert limiter.pauses == [0.05]  # and the whole model cooled down for as long
    kinds = [kind for kind, _ in limiter.events]
    assert kinds == ["acquired", "paused_until", "acquired"]
    (_, resumed_at), (_, second_acquired) = limiter.events[1], limiter.events[2]
    assert second_acquired >= resumed_at  # the retry waited for the cooldown
    assert limiter.in_flight == 0
    assert server.outcomes == ["rate_limited", "ok"]


def test_429_without_retry_after_pauses_for_the_default_cooldown(
    server: FakeOpenRouterServer,
) -> None:
    server.enqueue(Behaviour(Fault.RATE_LIMITED, retry_after=None))
    limiter = ModelLimiter(requests_per_second=100, max_in_flight=2)
    stats = RetryStats()

    forecast(server, stats=stats, limiter=limiter, rate_limit_cooldown=0.02)

    assert limiter.pauses == [0.02]
    assert stats.rate_limited == 1
    assert server.request_count == 2


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.UNAVAILABLE, 503),
        (Fault.SERVER_ERROR, 500),
        (Fault.BAD_GATEWAY, 502),
        (Fault.REQUEST_TIMEOUT, 408),
    ],
)
def test_server_errors_are_retried(server: FakeOpenRouterServer, fault: Fault, status: int) -> None:
    server.enqueue(fault)
    stats = RetryStats()

    result = forecast(server, stats=stats)

    assert result.probability == expected()["probability"]
    assert server.request_count == 2
    assert stats.statuses == {status: 1}
    assert stats.retries == 1


@pytest.mark.parametrize("fault", [Fault.ERROR_IN_200, Fault.FINISH_ERROR, Fault.NO_CHOICES])
def test_error_inside_a_200_body_is_retried_like_a_502(
    server: FakeOpenRouterServer, fault: Fault
) -> None:
    server.enqueue(fault)
    stats = RetryStats()

    result = forecast(server, stats=stats)

    assert result.probability == expected()["probability"]
    assert result.attempts == 1  # an HTTP-level retry, not a re-ask
    assert server.request_count == 2
    assert stats.statuses == {502: 1}


def test_dropped_connection_is_retried(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.DROP)
    stats = RetryStats()

    result = forecast(server, stats=stats)

    assert result.probability == expected()["probability"]
    assert server.request_count == 2
    assert sum(stats.errors.values()) == 1
    assert set(stats.errors) <= {"RemoteProtocolError", "ReadError", "ConnectError"}


def test_answer_slower_than_the_timeout_is_retried(server: FakeOpenRouterServer) -> None:
    server.enqueue(Behaviour(Fault.SLOW, delay=2.0))
    stats = RetryStats()

    result = forecast(server, stats=stats, timeout=0.3)

    assert result.probability == expected()["probability"]
    assert server.request_count == 2
    assert stats.errors == {"ReadTimeout": 1}


def test_in_flight_budget_402_is_retried(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.IN_FLIGHT_BUDGET)
    stats = RetryStats()

    result = forecast(server, stats=stats)

    assert result.probability == expected()["probability"]
    assert server.request_count == 2
    assert stats.statuses == {402: 1}


def test_retries_are_bounded(server: FakeOpenRouterServer) -> None:
    server.enqueue(*[Fault.UNAVAILABLE] * FAST.max_attempts)

    with pytest.raises(OpenRouterUnavailableError) as info:
        forecast(server)

    assert server.request_count == FAST.max_attempts
    assert info.value.status == 503
    assert info.value.retryable is True
    assert "after 4 attempt(s)" in str(info.value)


# -- invalid answers: re-asked, then InvalidForecast ---------------------------------------


def test_garbage_answer_is_re_asked(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.GARBAGE)

    result = forecast(server)

    assert result.probability == expected()["probability"]
    assert result.attempts == 2
    assert server.request_count == 2
    # Both answers were paid for.
    assert result.cost_usd == pytest.approx(server.total_cost)
    assert server.requests[0].body == server.requests[1].body


def test_out_of_range_probability_is_an_invalid_forecast(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.OUT_OF_RANGE, Fault.OUT_OF_RANGE)

    with pytest.raises(InvalidForecast) as info:
        forecast(server)

    assert isinstance(info.value, ForecastAttemptsExhausted)
    assert info.value.attempts == 2
    assert "probability" in str(info.value)
    assert info.value.cost_usd == pytest.approx(server.total_cost)
    assert server.request_count == 2


def test_truncated_answer_is_an_invalid_forecast(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.TRUNCATED, Fault.TRUNCATED)
    stats = RetryStats()

    with pytest.raises(InvalidForecast, match="truncated"):
        forecast(server, stats=stats)

    assert server.request_count == 2  # re-asked once, never retried at the HTTP level
    assert stats.retries == 0


def test_truncated_completion_is_returned_by_the_client(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.TRUNCATED)

    async def main() -> Completion:
        async with _client(server) as client:
            return await client.complete(MODEL, build_messages(CTX))

    completion = asyncio.run(main())
    assert completion.truncated is True
    assert completion.finish_reason == "length"
    assert server.request_count == 1


def test_one_attempt_means_no_re_ask(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.GARBAGE)

    with pytest.raises(ForecastAttemptsExhausted) as info:
        forecast(server, max_attempts=1)

    assert info.value.attempts == 1
    assert "not JSON" in str(info.value)
    assert server.request_count == 1


def test_keyword_faults_hit_only_matching_markets(server: FakeOpenRouterServer) -> None:
    server.on_keyword("Atlantis", Fault.GARBAGE, forever=True)
    atlantis = CTX.model_copy(update={"question": "Will Atlantis be found in 2026?"})

    with pytest.raises(InvalidForecast):
        forecast(server, atlantis)
    assert forecast(server).probability == expected()["probability"]
    assert server.outcomes == ["garbage", "garbage", "ok"]


# -- fail fast -----------------------------------------------------------------------------


def test_401_fails_fast_without_leaking_the_key(server: FakeOpenRouterServer) -> None:
    wrong_key = "sk-or-v1-wrong-key-0000000000000000"
    stats = RetryStats()

    with captured_logs() as logs, pytest.raises(OpenRouterAuthError) as info:
        forecast(server, stats=stats, api_key=wrong_key)

    assert server.request_count == 1
    assert server.requests[0].auth_ok is False
    assert stats.attempts == 1 and stats.retries == 0
    error = info.value
    assert error.status == 401
    assert "API key" in str(error)
    for text in (str(error), repr(error), repr(error.args), *logs):
        assert wrong_key not in text
        assert KEY not in text
    assert logs  # httpx and httpcore did log the exchange


def test_key_never_appears_in_logs_of_a_retried_call(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.UNAVAILABLE, Fault.DROP, Fault.GARBAGE)

    with captured_logs() as logs:
        forecast(server)

    assert any("HTTP retry" in line for line in logs)
    assert all(KEY not in line for line in logs)


def test_402_out_of_credits_fails_fast(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.NO_CREDITS)

    with pytest.raises(OpenRouterCreditsError, match="out of credits") as info:
        forecast(server)

    assert info.value.status == 402
    assert info.value.retryable is False
    assert server.request_count == 1


def test_400_fails_fast_and_says_why(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.BAD_REQUEST)

    with pytest.raises(OpenRouterBadRequestError) as info:
        forecast(server)

    assert info.value.status == 400
    assert "bad request" in str(info.value)
    assert "response_format" in str(info.value)  # OpenRouter's reason
    assert server.request_count == 1


def test_403_moderation_fails_fast(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.MODERATION)

    with pytest.raises(OpenRouterForbiddenError) as info:
        forecast(server)

    assert info.value.status == 403
    assert "flagged" in str(info.value)
    assert server.request_count == 1


def test_401_scripted_fault_fails_fast(server: FakeOpenRouterServer) -> None:
    server.enqueue(Fault.UNAUTHORIZED)

    with pytest.raises(OpenRouterAuthError):
        forecast(server)
    assert server.request_count == 1


# -- the key stays secret ------------------------------------------------------------------


def test_missing_key_is_refused_up_front() -> None:
    with pytest.raises(OpenRouterAuthError, match="OPENROUTER_API_KEY"):
        OpenRouterClient("  ")


def test_repr_hides_the_key(server: FakeOpenRouterServer) -> None:
    async def main() -> None:
        async with _client(server) as client:
            for text in (repr(client), str(client), repr(vars(client))):
                assert KEY not in text
            assert "[redacted]" in repr(client)
            forecaster = OpenRouterForecaster(client, MODEL)
            assert KEY not in repr(forecaster)
            with pytest.raises(TypeError):
                pickle.dumps(client)

    asyncio.run(main())


def test_every_error_is_an_openrouter_error() -> None:
    for cls in (
        OpenRouterAuthError,
        OpenRouterBadRequestError,
        OpenRouterCreditsError,
        OpenRouterForbiddenError,
        OpenRouterUnavailableError,
    ):
        assert issubclass(cls, OpenRouterError)
    assert issubclass(ForecastAttemptsExhausted, InvalidForecast)


# -- limits --------------------------------------------------------------------------------


def test_limiter_caps_what_the_server_sees_in_flight() -> None:
    limiter = ModelLimiter(requests_per_second=500, max_in_flight=3)
    contexts = [CTX.model_copy(update={"question": f"Will event {i} happen?"}) for i in range(12)]

    with FakeOpenRouterServer(api_key=KEY, latency_mean=0.02, seed=1) as server:

        async def main() -> list[ForecastResult]:
            async with _client(server, limiter=limiter) as client:
                forecaster = OpenRouterForecaster(client, MODEL)
                return await asyncio.gather(*(forecaster.forecast(c) for c in contexts))

        results = asyncio.run(main())

        assert len(results) == 12
        assert server.request_count == 12
        assert server.max_in_flight_seen <= 3
    assert limiter.max_in_flight_seen <= 3
    assert limiter.acquired == 12
    assert limiter.in_flight == 0


def test_enforcing_server_rejects_excess_and_the_client_recovers() -> None:
    contexts = [CTX.model_copy(update={"question": f"Will event {i} happen?"}) for i in range(6)]
    policy = RetryPolicy(max_attempts=30, initial_wait=0.005, max_wait=0.05)

    with FakeOpenRouterServer(api_key=KEY, max_in_flight=2, latency_mean=0.02, seed=2) as server:

        async def main() -> list[ForecastResult]:
            # No client-side limiter: the server's own cap must push back.
            async with _client(server, retry_policy=policy) as client:
                forecaster = OpenRouterForecaster(client, MODEL)
                return await asyncio.gather(*(forecaster.forecast(c) for c in contexts))

        results = asyncio.run(main())

        assert len(results) == 6
        assert server.counts["429_in_flight"] >= 1
        assert server.counts["ok"] == 6
        assert sum(r.rate_limited for r in results) == server.counts["429_in_flight"]


def test_enforcing_server_rate_limit_pauses_the_client_limiter() -> None:
    contexts = [CTX.model_copy(update={"question": f"Will event {i} happen?"}) for i in range(5)]
    # A client limiter far looser than the server: the server's 429s must slow it down.
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=5, burst=5)
    policy = RetryPolicy(max_attempts=30, initial_wait=0.005, max_wait=0.05)

    with FakeOpenRouterServer(api_key=KEY, rate_limit=40, burst=1) as server:

        async def main() -> list[ForecastResult]:
            async with _client(server, retry_policy=policy, limiter=limiter) as client:
                forecaster = OpenRouterForecaster(client, MODEL)
                return await asyncio.gather(*(forecaster.forecast(c) for c in contexts))

        results = asyncio.run(main())

        assert server.counts["ok"] == 5
        assert server.counts["429_rate"] >= 1
        assert sum(r.rate_limited for r in results) == server.counts["429_rate"]
    # Each 429 carried the server's Retry-After (time to its next token, <= 1/40 s).
    assert limiter.pause_count == server.counts["429_rate"]
    assert all(0 < p <= 0.025 for p in limiter.pauses)


def test_unusable_base_url_fails_fast_and_is_not_retryable() -> None:
    async def main() -> None:
        async with OpenRouterClient(KEY, base_url="ftp://127.0.0.1:9", retry_policy=FAST) as c:
            await c.complete(MODEL, build_messages(CTX))

    with pytest.raises(OpenRouterError) as info:
        asyncio.run(main())
    assert not isinstance(info.value, OpenRouterUnavailableError)
    assert info.value.retryable is False
    assert KEY not in str(info.value)
