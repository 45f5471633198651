"""PredictionReport: the counts a prediction run reports, and the metadata the `predictions`
asset shows for a partition (README "Predictions": selected, predicted, skipped, failed,
tokens, cost, the day's spend, latency p50/p95, retries, 429s). No database."""

from __future__ import annotations

import httpx
import pytest

from prediction_pipeline.clients.http_retry import RetryableHTTPError, RetryStats
from prediction_pipeline.services.predict import PredictionReport


def _rate_limited() -> RetryableHTTPError:
    return RetryableHTTPError(httpx.Response(429, request=httpx.Request("POST", "http://x")))


def test_the_metadata_of_a_run_holds_every_promised_figure() -> None:
    stats = RetryStats()
    for _ in range(3):
        stats.record_attempt()
    stats.record_failure(_rate_limited())
    stats.record_sleep(1.5)
    stats.record_failure(_rate_limited())
    stats.record_sleep(2.0)
    report = PredictionReport(
        selected=10,
        predicted=6,
        skipped_existing=2,
        skipped_budget=1,
        failed=1,
        prompt_tokens=1200,
        completion_tokens=345,
        cost_usd=0.01234567,
        day_spent_usd=1.23456789,
        latencies_ms=[100.04, 200.0, 300.26, 400.0, 1000.33],
        stats=stats,
        elapsed_s=12.3456,
    )

    assert report.metadata() == {
        "selected": 10,
        "predicted": 6,
        "skipped_existing": 2,
        "skipped_budget": 1,
        "failed": 1,
        "prompt_tokens": 1200,
        "completion_tokens": 345,
        "tokens": 1545,
        "cost_usd": 0.012346,  # to the micro-dollar
        "day_spent_usd": 1.234568,
        "latency_p50_ms": 300.3,  # to a tenth of a millisecond
        "latency_p95_ms": 880.3,  # interpolated between 400 and 1000.33
        "retries": 2,
        "http_429s": 2,
        "elapsed_s": 12.35,
    }


def test_an_empty_run_reports_zeros_not_errors() -> None:
    # A partition whose markets were all stored already: nothing attempted, no latencies.
    report = PredictionReport(selected=4, skipped_existing=4)
    meta = report.metadata()
    assert (report.attempted, report.failure_share) == (0, 0.0)
    assert meta["latency_p50_ms"] == meta["latency_p95_ms"] == 0.0
    assert (meta["retries"], meta["http_429s"], meta["tokens"], meta["cost_usd"]) == (0, 0, 0, 0)


def test_the_failure_share_is_of_the_markets_attempted() -> None:
    report = PredictionReport(selected=10, skipped_existing=5, predicted=3, failed=1)
    assert report.attempted == 4
    assert report.failure_share == pytest.approx(0.25)
    assert report.latency_percentile(50) == 0.0
