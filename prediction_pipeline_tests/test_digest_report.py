"""DeliveryReport and DeliverySettings: the digest asset's metadata (README "Digests"), when a
day counts as incomplete (a later run must send the rest), and the settings refused before
anything is sent. No database, no SMTP."""

from __future__ import annotations

import datetime as dt

import pytest

from prediction_pipeline.services.digest_report import DeliveryReport
from prediction_pipeline.services.digest_settings import DeliverySettings


def test_the_metadata_holds_every_count_of_the_run() -> None:
    report = DeliveryReport(
        considered=100,
        sent=60,
        skipped_nothing_new=10,
        skipped_opted_out=5,
        skipped_already_sent=4,
        skipped_in_flight=3,
        skipped_failed_earlier=2,
        failed_permanent=7,
        failed_transient=6,
        released=1,
        not_attempted=8,
        lost_claims=9,
        held_elsewhere={11: "run-b", 12: ""},
        attempts=80,
        retries=12,
        maybe_delivered=1,
        connections_opened=2,
        elapsed_s=41.256,
        send_window_s=30.0,
    )
    assert report.metadata() == {
        "users_considered": 100,
        "sent": 60,
        "skipped": 10 + 5 + 4 + 2,  # settled without a message from this run
        "skipped_nothing_new": 10,
        "skipped_opted_out": 5,
        "skipped_already_sent": 4,
        "skipped_in_flight": 3,
        "lost_claims": 9,
        "held_by_another_delivery": 2,
        "skipped_failed_earlier": 2,
        "failed": 13,
        "failed_permanent": 7,
        "failed_transient": 6,
        "released_unsent": 1,
        "not_attempted": 8,
        "send_attempts": 80,
        "send_retries": 12,
        "maybe_delivered_then_retried": 1,
        "connections_opened": 2,
        "messages_per_second": 2.67,
        "elapsed_s": 41.26,
    }


def test_no_send_window_means_no_rate() -> None:
    assert DeliveryReport(attempts=5).messages_per_second == 0.0


@pytest.mark.parametrize(
    "left_over",
    [
        {"failed_transient": 1},
        {"released": 1},
        {"stopped": "SIGTERM"},
        {"fatal": "SMTP login refused"},
        {"held_elsewhere": {7: "run-b"}},
    ],
)
def test_a_day_with_users_left_for_a_later_run_is_incomplete(left_over: dict) -> None:
    assert DeliveryReport(**left_over).incomplete


def test_a_day_settled_for_everyone_is_complete() -> None:
    report = DeliveryReport(
        considered=4, sent=1, skipped_nothing_new=1, failed_permanent=1, skipped_in_flight=0
    )
    assert not report.incomplete
    assert report.held_summary() == ""


def test_the_held_summary_names_the_runs_holding_users() -> None:
    report = DeliveryReport(held_elsewhere={1: "run-b", 2: "run-a", 3: "run-b", 4: ""})
    assert report.held_summary() == (
        "4 users claimed by another delivery were not settled by the end of this run "
        "(held by run run-a, run-b); a later run sends to them once that claim is released "
        "or its lease expires"
    )
    unnamed = DeliveryReport(held_elsewhere={1: ""})
    assert unnamed.held_summary().startswith("1 users claimed by another delivery were not")
    assert "held by run" not in unnamed.held_summary()


@pytest.mark.parametrize(
    "bad",
    [{"chunk_size": 0}, {"connections": 0}, {"max_messages_per_second": 0}],
)
def test_settings_that_cannot_send_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="chunk_size and connections must be >= 1, the rate > 0"):
        DeliverySettings(**bad)


def test_the_smallest_settings_that_can_send_are_accepted() -> None:
    settings = DeliverySettings(
        chunk_size=1, connections=1, max_messages_per_second=0.01, lease=dt.timedelta(minutes=1)
    )
    assert (settings.chunk_size, settings.connections) == (1, 1)


def test_a_lease_shorter_than_one_send_is_refused() -> None:
    with pytest.raises(ValueError, match="pending_lease_minutes"):
        DeliverySettings(lease=dt.timedelta(seconds=30))


def test_default_settings() -> None:
    # The defaults the README documents for the digest asset's config.
    settings = DeliverySettings()
    assert (settings.chunk_size, settings.max_messages_per_second, settings.connections) == (
        500,
        10.0,
        2,
    )
    assert settings.lease == dt.timedelta(minutes=30)
    assert settings.max_consecutive_failures == 25
    assert (settings.retry.max_attempts, settings.retry.initial_wait) == (4, 1.0)
    assert settings.retry.max_wait == 30.0
