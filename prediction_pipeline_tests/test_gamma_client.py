"""GammaClient and the shared HTTP retry policy, against a real HTTP server on loopback.

Waits between retries go through an injected recording `sleep`, so the tests assert the wait
the policy chose (e.g. the honoured Retry-After) without sleeping or timing anything. Only the
stalled-response test spends real time: one short client timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from prediction_pipeline.clients.gamma import GammaClient, GammaError
from prediction_pipeline.clients.http_retry import (
    RetryableHTTPError,
    RetryPolicy,
    RetryStats,
    build_async_retrying,
    parse_retry_after,
    raise_for_retryable,
    send_with_retry,
)
from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline_tests.fakes.gamma_server import (
    FakeGammaServer,
    Reply,
    gamma_market,
)

FAST = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.05, max_retry_after=5.0)


@pytest.fixture
def server() -> Iterator[FakeGammaServer]:
    with FakeGammaServer([gamma_market(i) for i in range(250)]) as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(server: FakeGammaServer, sleeps: list[float]) -> Iterator[GammaClient]:
    with GammaClient(
        base_url=server.url, timeout=5.0, retry_policy=FAST, sleep=sleeps.append
    ) as gamma:
        yield gamma


# -- pagination ----------------------------------------------------------------------------


def test_paginates_with_next_cursor(client: GammaClient, server: FakeGammaServer) -> None:
    batch = client.fetch_active_markets()

    assert len(batch.markets) == 250
    assert batch.skipped == []
    volumes = [m.volume for m in batch.markets]
    assert volumes == sorted(volumes, reverse=True)

    requests = server.recorded()
    assert len(requests) == 3
    for request in requests:
        assert request.param("limit") == "100"
        assert request.param("order") == "volumeNum"
        assert request.param("ascending") == "false"
        assert request.param("closed") == "false"
        assert request.param("active") == "true"
    assert requests[0].param("after_cursor") is None
    cursors = [r.param("after_cursor") for r in requests[1:]]
    assert all(cursors) and len(set(cursors)) == 2


def test_only_open_active_markets_are_listed(server: FakeGammaServer, client: GammaClient) -> None:
    server.markets = [
        gamma_market(0),
        gamma_market(1, closed=True),
        gamma_market(2, active=False),
        gamma_market(3),
    ]
    batch = client.fetch_active_markets()
    assert [m.source_id for m in batch.markets] == [f"0x{0:064x}", f"0x{3:064x}"]


def test_limit_stops_early_and_shrinks_the_last_page(
    client: GammaClient, server: FakeGammaServer
) -> None:
    batch = client.fetch_active_markets(limit=130)

    assert len(batch.markets) == 130
    assert [r.param("limit") for r in server.recorded()] == ["100", "30"]
    assert batch.markets[0].source_id == f"0x{0:064x}"  # largest volume first


def test_small_page_size(client: GammaClient, server: FakeGammaServer) -> None:
    batch = client.fetch_active_markets(limit=25, page_size=10)
    assert len(batch.markets) == 25
    assert [r.param("limit") for r in server.recorded()] == ["10", "10", "5"]


def test_page_size_above_the_endpoint_cap_is_refused(client: GammaClient) -> None:
    with pytest.raises(ValueError, match="page_size"):
        client.fetch_active_markets(page_size=101)


def test_end_date_window_is_sent_as_iso(client: GammaClient, server: FakeGammaServer) -> None:
    lo = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    hi = dt.date(2026, 12, 10)
    batch = client.fetch_active_markets(end_date_min=lo, end_date_max=hi)

    request = server.recorded()[0]
    assert request.param("end_date_min") == "2026-12-01T00:00:00Z"
    assert request.param("end_date_max") == "2026-12-10T00:00:00Z"
    assert batch.markets
    assert all(lo <= m.end_date <= dt.datetime(2026, 12, 10, tzinfo=dt.UTC) for m in batch.markets)


def test_stops_on_an_empty_page_even_with_a_cursor(
    client: GammaClient, server: FakeGammaServer
) -> None:
    server.enqueue(
        Reply(body={"markets": [gamma_market(1)], "next_cursor": "abc"}),
        Reply(body={"markets": [], "next_cursor": "def"}),
    )
    batch = client.fetch_active_markets()
    assert len(batch.markets) == 1
    assert len(server.recorded()) == 2
    assert server.recorded()[1].param("after_cursor") == "abc"


# -- retries -------------------------------------------------------------------------------


def test_429_honours_retry_after(
    client: GammaClient, server: FakeGammaServer, sleeps: list[float]
) -> None:
    server.enqueue(Reply(status=429, headers={"Retry-After": "1"}, body={"error": "slow down"}))

    batch = client.fetch_active_markets(limit=10)

    assert len(batch.markets) == 10
    assert sleeps == [1.0]  # the header's value, not the 0.01 s backoff
    assert len(server.recorded()) == 2
    assert client.stats.rate_limited == 1
    assert client.stats.retries == 1
    assert client.stats.waits == [1.0]


def test_retry_after_is_capped(server: FakeGammaServer, sleeps: list[float]) -> None:
    server.enqueue(Reply(status=429, headers={"Retry-After": "3600"}))
    with GammaClient(base_url=server.url, retry_policy=FAST, sleep=sleeps.append) as gamma:
        gamma.fetch_active_markets(limit=1)
    assert sleeps == [FAST.max_retry_after]


def test_503_twice_then_success(
    client: GammaClient, server: FakeGammaServer, sleeps: list[float]
) -> None:
    server.enqueue(Reply(status=503), Reply(status=503, body="<html>busy</html>"))

    batch = client.fetch_active_markets(limit=5)

    assert len(batch.markets) == 5
    assert len(server.recorded()) == 3
    assert len(sleeps) == 2
    assert all(0 <= wait <= FAST.max_wait for wait in sleeps)
    assert client.stats.retries == 2
    assert client.stats.statuses[503] == 2
    assert client.stats.rate_limited == 0


def test_stalled_response_times_out_and_is_retried(server: FakeGammaServer) -> None:
    server.enqueue(Reply(delay=3.0))  # much longer than the client's timeout
    stats = RetryStats()
    with GammaClient(base_url=server.url, timeout=0.3, retry_policy=FAST, stats=stats) as gamma:
        batch = gamma.fetch_active_markets(limit=3)

    assert len(batch.markets) == 3
    assert len(server.recorded()) == 2
    assert stats.errors["ReadTimeout"] == 1
    assert stats.retries == 1


def test_dropped_connection_is_retried(client: GammaClient, server: FakeGammaServer) -> None:
    server.enqueue(Reply(drop=True))
    batch = client.fetch_active_markets(limit=3)
    assert len(batch.markets) == 3
    assert client.stats.errors["RemoteProtocolError"] == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_fail_fast(
    client: GammaClient, server: FakeGammaServer, sleeps: list[float], status: int
) -> None:
    server.enqueue(Reply(status=status, body={"error": "bad request"}))

    with pytest.raises(GammaError) as info:
        client.fetch_active_markets()

    assert info.value.status == status
    assert info.value.path == "/markets/keyset"
    assert f"HTTP {status}" in str(info.value)
    assert len(server.recorded()) == 1
    assert sleeps == []
    assert client.stats.retries == 0


def test_retries_are_bounded(client: GammaClient, server: FakeGammaServer) -> None:
    server.enqueue(*[Reply(status=502)] * 10)

    with pytest.raises(GammaError) as info:
        client.fetch_active_markets()

    assert info.value.status == 502
    assert isinstance(info.value.__cause__, RetryableHTTPError)
    assert len(server.recorded()) == FAST.max_attempts
    assert client.stats.retries == FAST.max_attempts - 1


def test_unreachable_server_is_a_gamma_error(sleeps: list[float]) -> None:
    with FakeGammaServer() as gone:
        url = gone.url
    with (
        GammaClient(base_url=url, retry_policy=FAST, sleep=sleeps.append) as gamma,
        pytest.raises(GammaError, match="ConnectError"),
    ):
        gamma.fetch_active_markets()
    assert len(sleeps) == FAST.max_attempts - 1
    assert gamma.stats.errors["ConnectError"] == FAST.max_attempts


# -- malformed pages and markets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(body="<html>maintenance</html>"), "not JSON"),
        (Reply(body={"data": []}), "malformed page"),
        (Reply(body={"markets": "nope", "next_cursor": None}), "malformed page"),
        (Reply(body=[gamma_market(0)]), "malformed page"),
    ],
)
def test_malformed_page_is_a_clear_error(
    client: GammaClient, server: FakeGammaServer, reply: Reply, message: str
) -> None:
    server.enqueue(reply)
    with pytest.raises(GammaError, match=message) as info:
        client.fetch_active_markets()
    assert info.value.status == 200
    assert info.value.path == "/markets/keyset"
    assert len(server.recorded()) == 1


def test_malformed_market_and_duplicate_are_skipped(
    client: GammaClient, server: FakeGammaServer
) -> None:
    broken = gamma_market(7, question="")
    server.enqueue(
        Reply(
            body={
                "markets": [gamma_market(1), broken, "junk", gamma_market(2)],
                "next_cursor": "page-2",
            }
        ),
        Reply(
            body={
                "markets": [gamma_market(2), gamma_market(3, outcomes='["Lakers", "Celtics"]')],
                "next_cursor": "page-3",
            }
        ),
        Reply(body={"markets": [gamma_market(4)], "next_cursor": None}),
    )

    batch = client.fetch_active_markets()

    assert [m.source_id for m in batch.markets] == [f"0x{i:064x}" for i in (1, 2, 4)]
    reasons = {(s.source_id, s.reason.split(":")[0]) for s in batch.skipped}
    assert reasons == {
        (f"0x{7:064x}", "missing or empty question"),
        ("?", "not a JSON object (got str)"),
        (f"0x{2:064x}", "duplicate conditionId"),
        (f"0x{3:064x}", "outcomes are not a Yes/No pair"),
    }
    assert len(server.recorded()) == 3


def test_skipped_markets_do_not_count_towards_the_limit(
    client: GammaClient, server: FakeGammaServer
) -> None:
    server.enqueue(
        Reply(
            body={
                "markets": [gamma_market(1), gamma_market(1), gamma_market(2, question=None)],
                "next_cursor": "more",
            }
        ),
        Reply(body={"markets": [gamma_market(3), gamma_market(4)], "next_cursor": "more2"}),
    )
    batch = client.fetch_active_markets(limit=2)
    assert [m.source_id for m in batch.markets] == [f"0x{1:064x}", f"0x{3:064x}"]
    assert len(batch.skipped) == 2
    assert [r.param("limit") for r in server.recorded()] == ["2", "1"]


# -- look-up by condition id ---------------------------------------------------------------


def test_lookup_by_condition_ids_includes_closed_and_resolved(
    client: GammaClient, server: FakeGammaServer
) -> None:
    server.markets = [
        gamma_market(i, closed=i % 3 == 0, active=i % 5 != 0) for i in range(0, 130)
    ] + [
        gamma_market(
            500,
            closed=True,
            umaResolutionStatus="resolved",
            outcomePrices='["0", "1"]',
            closedTime="2025-04-01 08:21:16+00",
        )
    ]
    wanted = [f"0x{i:064x}" for i in range(0, 120)] + [f"0x{500:064x}", "0xunknown"]

    batch = client.fetch_markets_by_condition_ids(wanted + wanted[:5], chunk_size=50)

    assert {m.source_id for m in batch.markets} == set(wanted) - {"0xunknown"}
    assert batch.skipped == []
    by_id = {m.source_id: m for m in batch.markets}
    assert by_id[f"0x{3:064x}"].status is MarketStatus.CLOSED
    assert by_id[f"0x{1:064x}"].status is MarketStatus.OPEN
    assert by_id[f"0x{500:064x}"].status is MarketStatus.RESOLVED
    assert by_id[f"0x{500:064x}"].resolved_outcome == "no"

    requests = server.recorded()
    assert len(requests) == 3 * 2  # 122 distinct ids -> 3 chunks, each closed=false and true
    assert [r.param("closed") for r in requests] == ["false", "true"] * 3
    assert [len(r.params("condition_ids")) for r in requests] == [50, 50, 50, 50, 22, 22]
    assert all(r.param("active") is None and r.param("order") is None for r in requests)
    asked = [cid for r in requests[::2] for cid in r.params("condition_ids")]
    assert asked == list(dict.fromkeys(wanted))


def test_lookup_ignores_markets_not_asked_for(client: GammaClient, server: FakeGammaServer) -> None:
    # A server that ignored `condition_ids` would return the whole catalogue.
    server.enqueue(
        Reply(body={"markets": [gamma_market(1), gamma_market(2)], "next_cursor": "x"}),
        Reply(body={"markets": [gamma_market(3)], "next_cursor": "y"}),
        Reply(body={"markets": [gamma_market(1), gamma_market(4)], "next_cursor": None}),
    )
    batch = client.fetch_markets_by_condition_ids([f"0x{1:064x}"])
    assert [m.source_id for m in batch.markets] == [f"0x{1:064x}"]
    assert batch.skipped == []
    assert len(server.recorded()) == 3  # two pages at most for closed=false, then closed=true


def test_lookup_of_nothing_sends_nothing(client: GammaClient, server: FakeGammaServer) -> None:
    assert client.fetch_markets_by_condition_ids(["", "  "]).markets == []
    assert server.recorded() == []


# -- the retry policy on its own -----------------------------------------------------------


def test_parse_retry_after() -> None:
    now = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)
    later = email.utils.format_datetime(now + dt.timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("1.5", now=now) == 1.5
    assert parse_retry_after(later, now=now) == 30.0
    assert parse_retry_after("Mon, 02 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-3", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_http_date_retry_after_is_honoured(server: FakeGammaServer, sleeps: list[float]) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    server.enqueue(Reply(status=503, headers={"Retry-After": email.utils.format_datetime(when)}))
    with httpx.Client(base_url=server.url) as http:
        response = send_with_retry(
            http, "GET", "/anything", policy=FAST, sleep=sleeps.append, stats=RetryStats()
        )
    assert response.status_code == 404  # the fake's answer once the 503 is past
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 4.0


def test_caller_hook_makes_a_status_retryable(server: FakeGammaServer, sleeps: list[float]) -> None:
    budget = {"error": {"code": 402, "metadata": {"reason": "in_flight_budget_exhausted"}}}
    server.enqueue(
        Reply(status=402, body=budget),
        Reply(status=408),
        Reply(status=402, body={"error": {"code": 402, "message": "no credits"}}),
    )

    def retry_on(response: httpx.Response) -> bool:
        if response.status_code == 408:
            return True
        if response.status_code != 402:
            return False
        reason = response.json().get("error", {}).get("metadata", {}).get("reason")
        return reason == "in_flight_budget_exhausted"

    stats = RetryStats()
    with httpx.Client(base_url=server.url) as http:
        response = send_with_retry(
            http, "GET", "/api/v1/chat/completions", policy=FAST, stats=stats,
            retry_on=retry_on, sleep=sleeps.append,
        )  # fmt: skip
    assert response.status_code == 402  # the plain 402 is returned at once, not retried
    assert stats.attempts == 3 and stats.retries == 2
    assert dict(stats.statuses) == {402: 1, 408: 1}


async def asend_with_retry(http: httpx.AsyncClient, method: str, url: str, *, policy, **kwargs):
    """A request under the async retry loop, as the OpenRouter client runs it."""
    stats, sleep = kwargs.pop("stats", None), kwargs.pop("sleep", None)
    async for attempt in build_async_retrying(policy, stats=stats, sleep=sleep):
        with attempt:
            response = raise_for_retryable(await http.request(method, url, **kwargs), policy)
    return response


def test_async_retry_shares_the_policy(server: FakeGammaServer) -> None:
    server.enqueue(Reply(status=429, headers={"Retry-After": "0.5"}), Reply(status=500))
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url) as http:
            return await asend_with_retry(
                http, "GET", "/markets/keyset", params={"limit": "2"},
                policy=FAST, stats=stats, sleep=fake_sleep,
            )  # fmt: skip

    stats = RetryStats()
    response = asyncio.run(main())
    assert response.status_code == 200
    assert len(response.json()["markets"]) == 2
    assert sleeps[0] == 0.5 and len(sleeps) == 2
    assert stats.rate_limited == 1 and stats.retries == 2
    assert stats.as_metadata()["http_429s"] == 1


def test_async_retries_exhausted_reraise_the_last_response(server: FakeGammaServer) -> None:
    server.enqueue(*[Reply(status=504)] * FAST.max_attempts)

    async def no_sleep(seconds: float) -> None:
        return None

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await asend_with_retry(http, "GET", "/x", policy=FAST, sleep=no_sleep)

    with pytest.raises(RetryableHTTPError) as info:
        asyncio.run(main())
    assert info.value.status_code == 504
    assert info.value.response.status_code == 504


def test_logs_carry_no_secrets_or_query(
    server: FakeGammaServer, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    server.enqueue(Reply(status=429, headers={"Retry-After": "0"}))
    caplog.set_level(logging.DEBUG, logger="prediction_pipeline")
    with httpx.Client(base_url=server.url) as http:
        send_with_retry(
            http, "GET", "/api/v1/models", params={"api_key": "sk-query-secret"},
            headers={"Authorization": "Bearer sk-header-secret"},
            policy=FAST, sleep=sleeps.append,
        )  # fmt: skip
    text = caplog.text
    assert "GET /api/v1/models" in text and "429" in text
    assert "sk-header-secret" not in text and "sk-query-secret" not in text
    assert "Bearer" not in text


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_wait=10, max_wait=1)
    for jitter in ("full", "plus", "none"):
        policy = RetryPolicy(jitter=jitter, initial_wait=0.01, max_wait=0.02, max_attempts=3)
        with FakeGammaServer() as fake, httpx.Client(base_url=fake.url) as http:
            fake.enqueue(Reply(status=500), Reply(status=500))
            waits: list[float] = []
            send_with_retry(http, "GET", "/", policy=policy, sleep=waits.append)
            assert len(waits) == 2 and all(0 <= w <= 0.02 for w in waits)


def test_hostile_records_are_skipped_and_the_listing_goes_on(
    client: GammaClient, server: FakeGammaServer
) -> None:
    """Numbers too large for a float or for int() and a JSON-string field nested thousands
    deep, in the raw page text, cost their own market only; the next page is still read."""
    good = [json.dumps(gamma_market(i)) for i in range(3)]
    huge_volume = json.dumps(gamma_market(10, volumeNum="HUGE")).replace('"HUGE"', "9" * 5000)
    huge_price = json.dumps(gamma_market(11, outcomePrices="[1" + "0" * 400 + ", 0]"))
    deep = json.dumps(gamma_market(12, outcomes="[" * 5000 + "]" * 5000))
    records = ", ".join([good[0], huge_volume, good[1], huge_price, deep, good[2]])
    page = '{"markets": [' + records + '], "next_cursor": "page-2"}'
    server.enqueue(
        Reply(body=page.encode(), headers={"Content-Type": "application/json"}),
        Reply(body={"markets": [gamma_market(4)], "next_cursor": None}),
    )
    batch = client.fetch_active_markets()
    assert {m.source_id for m in batch.markets} == {
        gamma_market(i)["conditionId"] for i in (0, 1, 2, 4)
    }
    reasons = {s.source_id: s.reason for s in batch.skipped}
    assert sorted(reasons) == [gamma_market(i)["conditionId"] for i in (10, 11, 12)]
    assert "volumeNum is out of range" in reasons[gamma_market(10)["conditionId"]]
    assert "not a list of prices" in reasons[gamma_market(11)["conditionId"]]
    assert reasons[gamma_market(12)["conditionId"]] == "outcomes is nested too deeply"


def test_page_nested_too_deeply_is_a_clear_error(
    client: GammaClient, server: FakeGammaServer
) -> None:
    server.enqueue(Reply(body=("[" * 100_000 + "]" * 100_000).encode()))
    with pytest.raises(GammaError, match="nested too deeply"):
        client.fetch_active_markets()


def test_lookup_survives_a_record_whose_condition_id_is_not_a_string(
    client: GammaClient, server: FakeGammaServer
) -> None:
    """A list as conditionId used to raise TypeError (unhashable) and abort the look-up."""
    server.enqueue(
        Reply(
            body={
                "markets": [gamma_market(1, conditionId=["x"]), gamma_market(2)],
                "next_cursor": None,
            }
        )
    )
    batch = client.fetch_markets_by_condition_ids([gamma_market(2)["conditionId"]])
    assert [m.source_id for m in batch.markets] == [gamma_market(2)["conditionId"]]
