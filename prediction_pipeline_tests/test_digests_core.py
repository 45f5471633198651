"""The pure side of digests: unsubscribe tokens, what is news, rendering and the message."""

import datetime as dt
import email
import email.policy

import pytest

from prediction_pipeline.core.digests import (
    DigestRenderer,
    InvalidUnsubscribeToken,
    MarketState,
    ModelForecast,
    ModelScore,
    PreviousDigest,
    PriceAt,
    Recipient,
    WatchItem,
    build_digest,
    digest_message_id,
    make_unsubscribe_token,
    points,
    verify_unsubscribe_token,
)
from prediction_pipeline.core.email_addresses import clean_name, normalize_email

DAY = dt.date(2026, 11, 2)
PREV = PreviousDigest(DAY - dt.timedelta(days=1), dt.datetime(2026, 11, 1, 8, tzinfo=dt.UTC))
LONG_AGO = dt.datetime(2026, 10, 1, 9, tzinfo=dt.UTC)
USER = Recipient(7, "ann@example.com", "Ann")


# -- tokens -------------------------------------------------------------------------------


ANN = "ann@example.com"


def test_token_round_trip_and_tampering_is_rejected():
    token = make_unsubscribe_token(42, "s3cret", email=ANN)
    assert verify_unsubscribe_token(token, "s3cret", email=ANN) == 42
    assert verify_unsubscribe_token(token, b"s3cret", email=ANN) == 42
    version, user, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    tampered = [
        f"{version}.43.{signature}",  # another user, same signature
        f"{version}.{user}.{flipped}",  # signature altered
        f"v1.{user}.{signature}",  # another version
        f"{version}.042.{signature}",  # same number, other spelling
        f"{version}.{user}.",
        f"{version}.{user}",
        token + ".x",
        "",
        "garbage",
        f"{version}.-1.{signature}",
        f"{version}.４２.{signature}",  # non-ASCII digits
    ]
    for bad in tampered:
        with pytest.raises(InvalidUnsubscribeToken):
            verify_unsubscribe_token(bad, "s3cret", email=ANN)
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(token, "another secret", email=ANN)
    with pytest.raises(ValueError):
        make_unsubscribe_token(1, "", email=ANN)
    with pytest.raises(ValueError):
        make_unsubscribe_token(-1, "s3cret", email=ANN)
    assert make_unsubscribe_token(42, "s3cret", email=ANN) == token  # stateless, stable
    assert all(c.isalnum() or c in "._-" for c in token)  # URL-safe as is


def test_message_id_is_stable_per_user_and_day():
    assert digest_message_id(7, DAY) == "<digest-7-2026-11-02@prediction-pipeline>"
    assert digest_message_id(7, DAY, "example.com") == "<digest-7-2026-11-02@example.com>"


def test_emails_and_names_are_normalised():
    assert normalize_email("  Ann@Example.COM ") == "ann@example.com"
    assert normalize_email("ops@localhost") == "ops@localhost"
    for bad in ("ann", "a b@c.com", "a@b", "Ann <a@b.com>", "a@b.com\nBcc: x@y.com", "é@b.com"):
        with pytest.raises(ValueError):
            normalize_email(bad)
    assert clean_name("Ann\r\nBcc: evil@example.com") == "Ann Bcc: evil@example.com"
    assert clean_name("   ") is None


# -- what is news -------------------------------------------------------------------------


def state(mid, price, status="open", question=None, outcome=None):
    return MarketState(
        mid, "test", f"m{mid}", question or f"Market {mid}?", "", status, price, DAY, outcome
    )


def digest(items, states, baselines, forecasts=None, scores=None, previous=PREV, **kw):
    return build_digest(
        USER,
        DAY,
        previous,
        items,
        {s.market_id: s for s in states},
        baselines,
        forecasts or {},
        scores or {},
        **kw,
    )


def test_nothing_new_means_no_digest():
    since = PREV.day
    quiet = digest(
        [WatchItem(1, LONG_AGO)],
        [state(1, 0.50)],
        {(1, since): PriceAt(0.505, "open")},  # half a point: below the 1-point threshold
        {1: [ModelForecast("baseline/market", since, 0.5)]},  # made for the last digest
    )
    assert not quiet.has_news and len(quiet.watching) == 1
    moved = digest([WatchItem(1, LONG_AGO)], [state(1, 0.52)], {(1, since): PriceAt(0.5, "open")})
    assert moved.has_news and moved.moved == 1
    assert moved.watching[0].change == pytest.approx(0.02)
    new_forecast = digest(
        [WatchItem(1, LONG_AGO)],
        [state(1, 0.5)],
        {(1, since): PriceAt(0.5, "open")},
        {1: [ModelForecast("m", DAY, 0.4)]},
    )
    assert new_forecast.has_news and new_forecast.watching[0].forecasts[0].delta == pytest.approx(
        0.1
    )


def test_a_market_added_after_the_last_digest_counts_from_when_it_was_added():
    previous = PreviousDigest(dt.date(2026, 10, 30), dt.datetime(2026, 10, 30, 8, tzinfo=dt.UTC))
    added = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    d = digest(
        [WatchItem(1, added)],
        [state(1, 0.6)],
        {(1, added.date()): PriceAt(0.55, "open"), (1, previous.day): PriceAt(0.1, "open")},
        previous=previous,
    )
    line = d.watching[0]
    assert line.new_item and line.since_added and line.change == pytest.approx(0.05)
    first = digest([WatchItem(1, LONG_AGO)], [state(1, 0.6)], {}, previous=None)
    assert first.has_news and first.watching[0].new_item  # a first digest is news


def test_markets_that_closed_or_resolved_are_reported_once_with_scores():
    since = PREV.day
    items = [WatchItem(1, LONG_AGO), WatchItem(2, LONG_AGO), WatchItem(3, LONG_AGO)]
    states = [
        state(1, 1.0, "resolved", outcome="yes"),
        state(2, 0.3, "closed"),
        state(3, 0.0, "resolved", outcome="no"),
    ]
    baselines = {
        (1, since): PriceAt(0.9, "open"),
        (2, since): PriceAt(0.3, "open"),
        (3, since): PriceAt(0.0, "resolved"),  # resolved before: already reported
    }
    scores = {1: [ModelScore("b", 0.09, 2, 0.01), ModelScore("a", 0.01, 3, 0.02)]}
    d = digest(items, states, baselines, scores=scores)
    assert [(s.market_id, s.label) for s in d.settled] == [
        (1, "Resolved YES"),
        (2, "Closed, awaiting resolution"),
    ]
    assert [(s.model, s.beat_market) for s in d.settled[0].scores] == [("a", True), ("b", False)]
    assert d.quiet_settled == 1 and d.has_news and not d.watching


# -- rendering ----------------------------------------------------------------------------


def test_html_is_escaped_text_is_verbatim_and_the_message_is_multipart():
    title = '<script>alert(1)</script> & "quotes"'
    user = Recipient(7, "ann@example.com", '<b>Ann</b> "A"')
    d = build_digest(
        user,
        DAY,
        None,
        [WatchItem(1, LONG_AGO)],
        {1: state(1, 0.4, question=title)},
        {(1, LONG_AGO.date()): PriceAt(0.3, "open")},
        {1: [ModelForecast("x/<img src=x>", DAY, 0.5, "toward")]},
        {},
    )
    renderer = DigestRenderer("s3cret", public_url="https://example.com/")
    rendered = renderer.render(d)
    assert "<script>" not in rendered.html and "<img" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quotes&#34;" in rendered.html
    assert "&lt;b&gt;Ann&lt;/b&gt;" in rendered.html
    assert title in rendered.text and "+10.0 pts since added 2026-10-01" in rendered.text
    assert rendered.unsubscribe_url.startswith("https://example.com/unsubscribe?token=v2.7.")

    raw = renderer.message(d).as_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["List-Unsubscribe"] == f"<{rendered.unsubscribe_url}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Message-ID"] == "<digest-7-2026-11-02@prediction-pipeline>"
    assert message["To"].addresses[0].addr_spec == "ann@example.com"
    assert b"\r\n" in raw and all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert all(byte < 128 for byte in raw)  # 7-bit clean: safe for any SMTP server


def test_points_formatting():
    assert points(0.061) == "+6.1 pts"
    assert points(-0.2) == "-20.0 pts"
    assert points(0.0) == "±0.0 pts"
    assert points(None) == "n/a"
