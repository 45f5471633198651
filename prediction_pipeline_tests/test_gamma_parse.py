"""core.gamma: every Gamma quirk, one test each, on records in Gamma's own shape."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from prediction_pipeline.core.gamma import (
    decode_json_list,
    outcome_token_ids,
    parse_gamma_datetime,
    parse_market,
    parse_markets,
)
from prediction_pipeline.core.markets import Market, MarketStatus, SkippedMarket

FIXTURES = Path(__file__).parent / "fixtures" / "gamma"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def modern() -> dict[str, Any]:
    return load("market_open_modern")


@pytest.fixture
def resolved() -> dict[str, Any]:
    return load("market_resolved_legacy")


def as_market(raw: object) -> Market:
    parsed = parse_market(raw)
    assert isinstance(parsed, Market), parsed
    return parsed


def as_skipped(raw: object) -> SkippedMarket:
    parsed = parse_market(raw)
    assert isinstance(parsed, SkippedMarket), parsed
    return parsed


# -- a whole record ------------------------------------------------------------------------


def test_modern_open_market(modern: dict[str, Any]) -> None:
    market = as_market(modern)
    assert market.source == "polymarket"
    assert market.source_id == modern["conditionId"]
    assert market.question == "Will the Fed cut interest rates in December 2026?"
    assert market.slug == "will-the-fed-cut-interest-rates-in-december-2026"
    assert market.description.startswith("This market will resolve")
    assert market.outcomes == ("Yes", "No")
    assert market.yes_price == pytest.approx(0.615)
    assert market.volume == pytest.approx(1843921.118204)
    assert market.liquidity == pytest.approx(48211.3301)
    assert market.end_date == dt.datetime(2026, 12, 16, 19, 0, tzinfo=dt.UTC)
    assert market.status is MarketStatus.OPEN
    assert market.resolved_outcome is None
    assert market.closed_at is None


# -- JSON strings or lists -----------------------------------------------------------------


def test_json_string_fields_are_decoded_and_real_lists_accepted(modern: dict[str, Any]) -> None:
    as_lists = dict(modern, outcomes=["Yes", "No"], outcomePrices=["0.615", "0.385"])
    assert as_market(as_lists) == as_market(modern)
    as_floats = dict(modern, outcomePrices=[0.615, 0.385])
    assert as_market(as_floats).yes_price == pytest.approx(0.615)


def test_clob_token_ids_are_decoded_by_outcome_name(modern: dict[str, Any]) -> None:
    tokens = outcome_token_ids(modern)
    assert set(tokens) == {"Yes", "No"}
    assert tokens["Yes"].startswith("7132")
    assert outcome_token_ids(dict(modern, clobTokenIds=["a", "b"])) == {"Yes": "a", "No": "b"}
    assert outcome_token_ids(dict(modern, clobTokenIds="not json")) == {}
    assert outcome_token_ids(dict(modern, clobTokenIds='["only-one"]')) == {}


def test_decode_json_list() -> None:
    assert decode_json_list('["a", "b"]', "f") == ["a", "b"]
    assert decode_json_list(["a"], "f") == ["a"]
    assert decode_json_list(None, "f") is None
    assert decode_json_list("", "f") is None
    with pytest.raises(ValueError, match="not valid JSON"):
        decode_json_list("[oops", "f")
    with pytest.raises(ValueError, match="not a list"):
        decode_json_list('{"a": 1}', "f")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("outcomes", "[Yes, No", "outcomes is not valid JSON"),
        ("outcomes", '"Yes"', "outcomes is not a list"),
        ("outcomes", None, "missing outcomes"),
        ("outcomePrices", "[0.5", "outcomePrices is not valid JSON"),
        ("outcomePrices", '["0.5"]', "outcomePrices has 1 entries for 2 outcomes"),
        ("outcomePrices", '["abc", "0.5"]', "not a list of prices"),
        ("outcomePrices", '["1.5", "-0.5"]', "not a list of prices"),
    ],
)
def test_malformed_list_fields_skip_with_reason(
    modern: dict[str, Any], field: str, value: object, reason: str
) -> None:
    skipped = as_skipped(dict(modern, **{field: value}))
    assert skipped.source_id == modern["conditionId"]
    assert reason in skipped.reason


# -- volume and liquidity ------------------------------------------------------------------


def test_num_fields_win_over_strings(modern: dict[str, Any]) -> None:
    raw = dict(modern, volume="1", volumeNum=2.5, liquidity="3", liquidityNum=4.5)
    market = as_market(raw)
    assert (market.volume, market.liquidity) == (2.5, 4.5)


def test_strings_are_the_fallback_and_missing_is_zero(modern: dict[str, Any]) -> None:
    raw = {k: v for k, v in modern.items() if k not in {"volumeNum", "liquidityNum"}}
    market = as_market(raw)
    assert market.volume == pytest.approx(1843921.118204)
    assert market.liquidity == pytest.approx(48211.3301)

    bare = {k: v for k, v in raw.items() if k not in {"volume", "liquidity"}}
    market = as_market(bare)
    assert (market.volume, market.liquidity) == (0.0, 0.0)

    garbage = dict(bare, volume="n/a", volumeNum=None, liquidity="NaN")
    market = as_market(garbage)
    assert (market.volume, market.liquidity) == (0.0, 0.0)


# -- dates ---------------------------------------------------------------------------------


def test_closed_time_in_gamma_format(resolved: dict[str, Any]) -> None:
    assert resolved["closedTime"] == "2025-04-01 08:21:16+00"
    market = as_market(resolved)
    assert market.closed_at == dt.datetime(2025, 4, 1, 8, 21, 16, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-04-01 08:21:16+00", dt.datetime(2025, 4, 1, 8, 21, 16, tzinfo=dt.UTC)),
        ("2025-04-01 08:21:16.5+00", dt.datetime(2025, 4, 1, 8, 21, 16, 500000, tzinfo=dt.UTC)),
        ("2025-04-01 10:21:16+02", dt.datetime(2025, 4, 1, 8, 21, 16, tzinfo=dt.UTC)),
        ("2025-04-01 08:21:16+0000", dt.datetime(2025, 4, 1, 8, 21, 16, tzinfo=dt.UTC)),
        ("2025-04-01T08:21:16Z", dt.datetime(2025, 4, 1, 8, 21, 16, tzinfo=dt.UTC)),
        ("2025-04-01T08:21:16.123456789Z", dt.datetime(2025, 4, 1, 8, 21, 16, 123456, dt.UTC)),
        ("2025-04-01T08:21:16", dt.datetime(2025, 4, 1, 8, 21, 16, tzinfo=dt.UTC)),
        ("2025-04-01", dt.datetime(2025, 4, 1, tzinfo=dt.UTC)),
        (1743495676, dt.datetime(2025, 4, 1, 8, 21, 16, tzinfo=dt.UTC)),
        ("", None),
        ("yesterday", None),
        (None, None),
        (True, None),
    ],
)
def test_parse_gamma_datetime(text: object, expected: dt.datetime | None) -> None:
    assert parse_gamma_datetime(text) == expected


def test_end_date_falls_back_to_end_date_iso_and_bad_dates_are_none(
    modern: dict[str, Any],
) -> None:
    raw = {k: v for k, v in modern.items() if k != "endDate"}
    assert as_market(raw).end_date == dt.datetime(2026, 12, 16, tzinfo=dt.UTC)
    raw = dict(modern, endDate="not a date", endDateIso=None)
    assert as_market(raw).end_date is None


# -- YES by name ---------------------------------------------------------------------------


def test_yes_is_found_by_name_not_position(modern: dict[str, Any]) -> None:
    raw = dict(modern, outcomes='["No", "Yes"]', outcomePrices='["0.2", "0.8"]')
    market = as_market(raw)
    assert market.yes_price == pytest.approx(0.8)
    assert market.outcomes == ("No", "Yes")


def test_yes_matching_is_case_insensitive(modern: dict[str, Any]) -> None:
    raw = dict(modern, outcomes='["NO", "yes"]', outcomePrices='["0.3", "0.7"]')
    assert as_market(raw).yes_price == pytest.approx(0.7)


def test_non_yes_no_outcomes_are_skipped() -> None:
    raw = load("market_sports_teams")
    skipped = as_skipped(raw)
    assert skipped.source_id == raw["conditionId"]
    assert "not a Yes/No pair" in skipped.reason
    assert "Lakers" in skipped.reason


@pytest.mark.parametrize(
    "outcomes", ['["Yes", "No", "Maybe"]', '["Yes", "Yes"]', '["Yes"]', '["Up", "Down"]']
)
def test_other_outcome_sets_are_skipped(modern: dict[str, Any], outcomes: str) -> None:
    n = len(json.loads(outcomes))
    raw = dict(modern, outcomes=outcomes, outcomePrices=json.dumps(["0.5"] * n))
    assert "not a Yes/No pair" in as_skipped(raw).reason


# -- prices --------------------------------------------------------------------------------


def test_zero_prices_mean_no_price_not_skip(modern: dict[str, Any]) -> None:
    market = as_market(dict(modern, outcomePrices='["0", "0"]'))
    assert market.yes_price is None
    assert market.status is MarketStatus.OPEN


def test_missing_prices_mean_no_price(modern: dict[str, Any]) -> None:
    raw = {k: v for k, v in modern.items() if k != "outcomePrices"}
    assert as_market(raw).yes_price is None
    assert as_market(dict(modern, outcomePrices="")).yes_price is None


# -- status --------------------------------------------------------------------------------


def test_resolved_yes(resolved: dict[str, Any]) -> None:
    market = as_market(resolved)
    assert market.status is MarketStatus.RESOLVED
    assert market.resolved_outcome == "yes"
    assert market.yes_price == 1.0


def test_resolved_no_by_name_not_position(resolved: dict[str, Any]) -> None:
    raw = dict(resolved, outcomes='["No", "Yes"]', outcomePrices='["1", "0"]')
    market = as_market(raw)
    assert market.resolved_outcome == "no"
    assert market.yes_price == 0.0


def test_resolved_with_float_prices(resolved: dict[str, Any]) -> None:
    raw = dict(resolved, outcomePrices=[0.0, 1.0])
    assert as_market(raw).resolved_outcome == "no"


def test_resolved_fifty_fifty_is_void(resolved: dict[str, Any]) -> None:
    market = as_market(dict(resolved, outcomePrices='["0.5", "0.5"]'))
    assert market.status is MarketStatus.RESOLVED
    assert market.resolved_outcome == "void"
    assert market.yes_price == 0.5


def test_closed_is_not_resolved(resolved: dict[str, Any]) -> None:
    for uma in (None, "proposed", "disputed"):
        raw = dict(resolved, umaResolutionStatus=uma, outcomePrices='["0.97", "0.03"]')
        market = as_market(raw)
        assert market.status is MarketStatus.CLOSED
        assert market.resolved_outcome is None


def test_resolved_long_before_end_date(resolved: dict[str, Any]) -> None:
    market = as_market(resolved)
    assert market.closed_at is not None and market.end_date is not None
    assert market.end_date - market.closed_at > dt.timedelta(days=200)
    assert market.status is MarketStatus.RESOLVED


def test_resolution_status_without_closed_flag_still_resolves(resolved: dict[str, Any]) -> None:
    market = as_market(dict(resolved, closed=False))
    assert market.status is MarketStatus.RESOLVED


def test_open_when_not_closed(modern: dict[str, Any]) -> None:
    assert as_market(dict(modern, closed=False)).status is MarketStatus.OPEN
    assert as_market({k: v for k, v in modern.items() if k != "closed"}).status == "open"


# -- category and tags ---------------------------------------------------------------------


def test_legacy_category_wins(resolved: dict[str, Any]) -> None:
    market = as_market(resolved)
    assert market.category == "Crypto"
    assert market.tags == ("Crypto", "Bitcoin")


def test_modern_market_takes_category_and_tags_from_parent_event(
    modern: dict[str, Any],
) -> None:
    assert "category" not in modern and "tags" not in modern
    market = as_market(modern)
    assert market.category == "Fed Rates"
    assert market.tags == ("Fed Rates", "Finance", "Economy")


def test_event_category_before_tags(modern: dict[str, Any]) -> None:
    raw = copy.deepcopy(modern)
    raw["events"][0]["category"] = "Economics"
    assert as_market(raw).category == "Economics"


def test_market_tags_before_event_tags(modern: dict[str, Any]) -> None:
    raw = dict(modern, tags=[{"label": "Macro"}, {"label": "Fed Rates"}])
    market = as_market(raw)
    assert market.category == "Macro"
    assert market.tags == ("Macro", "Fed Rates", "Finance", "Economy")


def test_no_category_anywhere(modern: dict[str, Any]) -> None:
    raw = dict(modern, events=[{"id": "1", "title": "x"}])
    market = as_market(raw)
    assert market.category is None
    assert market.tags == ()
    assert as_market(dict(modern, events="garbage")).category is None
    assert as_market(dict(modern, category="", events=[])).category is None


# -- skips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("question", [None, "", "   ", 42])
def test_missing_or_empty_question_is_skipped(modern: dict[str, Any], question: object) -> None:
    skipped = as_skipped(dict(modern, question=question))
    assert skipped.source_id == modern["conditionId"]
    assert "question" in skipped.reason


@pytest.mark.parametrize("raw", [None, "a string", 42, ["Yes", "No"]])
def test_non_dict_is_skipped(raw: object) -> None:
    skipped = as_skipped(raw)
    assert skipped.source_id == "?"
    assert "not a JSON object" in skipped.reason


def test_missing_condition_id_is_skipped_under_the_gamma_id(modern: dict[str, Any]) -> None:
    raw = {k: v for k, v in modern.items() if k != "conditionId"}
    skipped = as_skipped(raw)
    assert skipped.source_id == "561243"
    assert skipped.reason == "missing conditionId"
    assert as_skipped({"question": "?"}).source_id == "?"


# -- batches -------------------------------------------------------------------------------


def test_parse_markets_deduplicates_by_condition_id(
    modern: dict[str, Any], resolved: dict[str, Any]
) -> None:
    later_copy = dict(modern, question="A later copy of the same market")
    batch = parse_markets(
        [modern, "junk", resolved, later_copy, load("market_sports_teams"), modern]
    )
    assert [m.source_id for m in batch.markets] == [modern["conditionId"], resolved["conditionId"]]
    assert batch.markets[0].question == modern["question"]  # the first one is kept
    reasons = [s.reason for s in batch.skipped]
    assert reasons.count("duplicate conditionId") == 2
    assert len(batch.skipped) == 4
    duplicates = [s for s in batch.skipped if s.reason == "duplicate conditionId"]
    assert {s.source_id for s in duplicates} == {modern["conditionId"]}


def test_a_skipped_record_does_not_claim_its_condition_id(modern: dict[str, Any]) -> None:
    broken = dict(modern, question="")
    batch = parse_markets([broken, modern])
    assert [m.question for m in batch.markets] == [modern["question"]]
    assert [s.reason for s in batch.skipped] == ["missing or empty question"]


def test_parse_markets_dedup_spans_calls(modern: dict[str, Any]) -> None:
    seen: set[str] = set()
    first = parse_markets([modern], seen_ids=seen)
    second = parse_markets([modern], seen_ids=seen)
    assert len(first.markets) == 1
    assert second.markets == []
    assert [s.reason for s in second.skipped] == ["duplicate conditionId"]


def test_parse_markets_empty() -> None:
    batch = parse_markets([])
    assert batch.markets == [] and batch.skipped == []


# -- hostile values: one record skipped, never the page --------------------------------------

HUGE = 10**400  # a 400-digit integer: fine for Python, too large for a float or a database


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"volumeNum": HUGE}, "volumeNum is out of range"),
        ({"volumeNum": None, "volume": "9" * 400}, "volume is out of range"),
        ({"liquidityNum": float("inf")}, "liquidityNum is out of range"),
        ({"volumeNum": "1e400"}, "volumeNum is out of range"),
        ({"volumeNum": 2e15}, "volumeNum is out of range"),
        ({"outcomePrices": [HUGE, 0]}, "not a list of prices"),
        ({"outcomePrices": "[1" + "0" * 400 + ", 0]"}, "not a list of prices"),
        ({"outcomePrices": '["1' + "0" * 400 + '", "0"]'}, "not a list of prices"),
        ({"outcomes": "[" * 4000 + "]" * 4000}, "outcomes is nested too deeply"),
        ({"outcomePrices": "[" * 4000 + "]" * 4000}, "outcomePrices is nested too deeply"),
        ({"outcomes": json.dumps(["Yes", "No", *["x"] * 5000])}, "outcomes is too long"),
    ],
)
def test_hostile_numbers_and_json_strings_skip_only_that_market(
    modern: dict[str, Any], overrides: dict[str, Any], reason: str
) -> None:
    bad = dict(modern, conditionId="0xbad", **overrides)
    other = dict(modern, conditionId="0xgood")
    batch = parse_markets([modern, bad, other])
    assert [m.source_id for m in batch.markets] == [modern["conditionId"], "0xgood"]
    [skipped] = batch.skipped
    assert skipped.source_id == "0xbad" and reason in skipped.reason
    assert len(skipped.reason) < 300  # the bad value is not repeated in full


def test_huge_epoch_end_date_is_no_date(modern: dict[str, Any]) -> None:
    assert parse_gamma_datetime(HUGE) is None
    assert parse_gamma_datetime("9999-12-31T23:00:00-05:00") is None
    assert parse_gamma_datetime("0001-01-01T00:00:00+05:00") is None
    assert as_market(dict(modern, endDate=HUGE, endDateIso=None)).end_date is None


def test_decode_json_list_bounds_numbers_and_depth() -> None:
    # Python refuses int() of more than 4300 digits; such a number decodes as a float.
    assert decode_json_list("[" + "9" * 5000 + "]", "f") == [float("inf")]
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_json_list("[" * 5000 + "]" * 5000, "f")


def test_any_other_error_in_one_record_skips_it(modern: dict[str, Any]) -> None:
    class Exploding(dict):
        def get(self, key: str, default: object = None) -> object:
            if key == "events":
                raise RuntimeError("boom")
            return super().get(key, default)

    batch = parse_markets([Exploding(modern), dict(modern, conditionId="0xgood")])
    assert [m.source_id for m in batch.markets] == ["0xgood"]
    assert batch.skipped[0].reason == "unparseable market (RuntimeError: 'boom')"


def test_reported_ids_are_bounded(modern: dict[str, Any]) -> None:
    skipped = as_skipped(dict(modern, conditionId="0x" + "f" * 10_000, question=""))
    assert len(skipped.source_id) <= 120
