"""Pure parsing of Polymarket Gamma market records into `Market`.

Gamma's market objects have several quirks that this module absorbs, so nothing else in the
pipeline needs to know about them:

- `outcomes`, `outcomePrices` and `clobTokenIds` are JSON *strings* (``'["Yes", "No"]'``);
  real lists are accepted too.
- `volume`/`liquidity` are strings, `volumeNum`/`liquidityNum` floats: the Num fields win,
  the strings are the fallback, and a missing value is 0.
- `closedTime` is not ISO 8601 (``2025-04-01 08:21:16+00``); `endDate` is ISO with ``Z``.
- YES is found by name in `outcomes` (case-insensitive), never by position. Markets whose
  outcomes are not a Yes/No pair (``["Lakers", "Celtics"]``) are skipped.
- Prices ``["0", "0"]`` carry no information: `yes_price` is None (the market is kept).
- Closed is not resolved: a market is resolved iff ``umaResolutionStatus == "resolved"``; the
  winner is the outcome whose price is 1, and a resolved market with no price at 1 (a 50-50
  split) is "void".
- Modern markets have no `category`; their tags live on the parent event (`events[0]`).

A record that cannot become a `Market` becomes a `SkippedMarket` with a reason: one bad record
never fails a batch. That includes hostile values: JSON numbers too large for a float
(`1e400`, a 400-digit integer), volumes beyond `MAX_AMOUNT`, JSON-string fields longer than
`MAX_JSON_FIELD_CHARS` or nested too deeply to decode, and any other error raised while
parsing one record. This module imports no HTTP library.

One module (over 400 lines) on purpose: every Gamma quirk is absorbed here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from prediction_pipeline.core.markets import (
    Market,
    MarketBatch,
    MarketStatus,
    SkippedMarket,
)

SOURCE = "polymarket"

_UNKNOWN_ID = "?"
_MAX_ID_CHARS = 120  # how much of a record's id a skip report repeats
# Gamma's JSON-string fields hold a handful of short items (two outcomes, two prices, two
# token ids); anything far longer is not a market record we can use.
MAX_JSON_FIELD_CHARS = 10_000
# The largest volume or liquidity we believe (USD): Polymarket's biggest markets are in the
# billions; beyond this the value is corrupt, and the market is skipped rather than stored.
MAX_AMOUNT = 1e15
# Integers longer than this in Gamma's JSON are decoded as floats (they can only be out of
# range anyway), so a huge number never hits Python's int-digit limit or float overflow.
_MAX_INT_DIGITS = 20
# Reprs of bad values in skip reasons stay short and never recurse deeply.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = 6
_short.maxlevel = 2
_PRICE_EPSILON = 1e-9
# A trailing UTC offset written as "+00" or "-0530" (no colon); fromisoformat in 3.11 accepts
# these too, but normalising keeps the parser independent of that detail.
_SHORT_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})?$")


class _Skip(Exception):
    """Internal: this record must be skipped for the given reason."""


def parse_market(raw: object) -> Market | SkippedMarket:
    """Parse one Gamma market record into a `Market`, or a `SkippedMarket` with a reason."""
    if not isinstance(raw, Mapping):
        return SkippedMarket(
            source_id=_UNKNOWN_ID,
            reason=f"not a JSON object (got {type(raw).__name__})",
        )
    source_id = record_id(raw)
    try:
        return _parse_market(raw)
    except _Skip as skip:
        return SkippedMarket(source_id=source_id, reason=str(skip))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'market'}: {err['msg']}"
            for err in exc.errors()
        )
        return SkippedMarket(source_id=source_id, reason=f"invalid market: {problems}")
    except Exception as exc:  # noqa: BLE001 (one hostile record must not fail the page)
        return SkippedMarket(
            source_id=source_id,
            reason=f"unparseable market ({type(exc).__name__}: {_short.repr(str(exc))})",
        )


def parse_markets(items: Iterable[object], *, seen_ids: set[str] | None = None) -> MarketBatch:
    """Parse a list of Gamma market records, dropping duplicates by conditionId.

    The first valid market with a given conditionId is kept; later ones are counted as
    skipped with reason "duplicate conditionId". A record skipped for another reason does not
    claim its conditionId, so a later valid copy is still kept.

    `seen_ids`, when given, is the set of conditionIds already taken (e.g. by earlier pages of
    the same listing); it is updated in place so that deduplication spans several calls.
    """
    seen: set[str] = seen_ids if seen_ids is not None else set()
    batch = MarketBatch()
    for item in items:
        parsed = parse_market(item)
        if isinstance(parsed, SkippedMarket):
            batch.skipped.append(parsed)
        elif parsed.source_id in seen:
            batch.skipped.append(
                SkippedMarket(source_id=parsed.source_id, reason="duplicate conditionId")
            )
        else:
            seen.add(parsed.source_id)
            batch.markets.append(parsed)
    return batch


def record_id(raw: object) -> str:
    """The best identifier of a raw record for reporting: conditionId, else id, else "?".

    Cut to `_MAX_ID_CHARS`: a hostile id must not flood the logs.
    """
    if isinstance(raw, Mapping):
        for key in ("conditionId", "id"):
            value = raw.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:_MAX_ID_CHARS]
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)[:_MAX_ID_CHARS] if value.bit_length() < 256 else "?"
    return _UNKNOWN_ID


def loads_bounded(text: str | bytes) -> Any:
    """`json.loads` for Gamma's JSON: integers longer than `_MAX_INT_DIGITS` digits become
    floats (so `int("9" * 5000)` never raises and a 400-digit volume becomes inf, which the
    range checks reject). Nesting too deep for the decoder still raises RecursionError."""
    return json.loads(text, parse_int=_parse_int)


def _parse_int(digits: str) -> int | float:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else float(digits)


def decode_json_list(value: object, field: str) -> list[Any] | None:
    """Decode a Gamma list field that is usually a JSON string, sometimes a real list.

    Returns None when the field is missing, null or an empty string; raises ValueError when it
    is present but not a list, longer than `MAX_JSON_FIELD_CHARS`, or nested too deeply.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if len(text) > MAX_JSON_FIELD_CHARS:
            raise ValueError(f"{field} is too long ({len(text)} characters)")
        try:
            value = loads_bounded(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{field} is not valid JSON: {text[:80]!r}") from exc
        except RecursionError as exc:
            raise ValueError(f"{field} is nested too deeply") from exc
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ValueError(f"{field} is not a list (got {type(value).__name__})")
    return value


def outcome_token_ids(raw: Mapping[str, Any]) -> dict[str, str]:
    """Map each outcome name to its CLOB token id (from `outcomes` and `clobTokenIds`).

    Empty when either field is missing, malformed, or the two lengths differ.
    """
    try:
        outcomes = decode_json_list(raw.get("outcomes"), "outcomes")
        tokens = decode_json_list(raw.get("clobTokenIds"), "clobTokenIds")
    except ValueError:
        return {}
    if not outcomes or not tokens or len(outcomes) != len(tokens):
        return {}
    return {str(name): str(token) for name, token in zip(outcomes, tokens, strict=True)}


def parse_gamma_datetime(value: object) -> dt.datetime | None:
    """Parse Gamma timestamps: ISO with ``Z``, ``2025-04-01 08:21:16+00``, plain dates, epochs.

    Naive values are taken as UTC; the result is always timezone-aware UTC. Returns None for
    missing or unparseable values.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, int | float):
        try:
            if not math.isfinite(value):  # OverflowError for ints beyond a float
                return None
            seconds = value / 1000 if value > 1e11 else value  # milliseconds vs seconds
            return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    elif isinstance(value, str):
        parsed = _parse_datetime_text(value)
        if parsed is None:
            return None
    else:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past datetime.max in UTC
        return None


def _parse_datetime_text(text: str) -> dt.datetime | None:
    text = text.strip()
    if not text:
        return None
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    text = _SHORT_OFFSET.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}:{m.group(3) or '00'}"
            if _has_time(text[: m.start()])
            else m.group(0)
        ),
        text,
    )
    # fromisoformat wants 3 or 6 fractional digits in some versions: pad or trim.
    text = re.sub(
        r"\.(\d+)(?=[+-]\d{2}:\d{2}$|$)", lambda m: "." + m.group(1)[:6].ljust(6, "0"), text
    )
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _has_time(prefix: str) -> bool:
    """True when a datetime string prefix contains a time of day (so a +/- is an offset)."""
    return ":" in prefix


def _parse_market(raw: Mapping[str, Any]) -> Market:
    condition_id = raw.get("conditionId")
    if not isinstance(condition_id, str) or not condition_id.strip():
        raise _Skip("missing conditionId")
    condition_id = condition_id.strip()

    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _Skip("missing or empty question")

    outcomes = _outcomes(raw)
    yes_index = next(i for i, name in enumerate(outcomes) if name.strip().lower() == "yes")
    prices = _prices(raw, len(outcomes))
    yes_price = _yes_price(prices, yes_index)

    status, resolved_outcome = _status(raw, outcomes, prices)
    event = _first_event(raw)
    market_tags = _tag_labels(raw.get("tags"))
    event_tags = _tag_labels(event.get("tags")) if event else []

    return Market(
        source=SOURCE,
        source_id=condition_id,
        question=question,
        description=_text(raw.get("description")),
        slug=_text(raw.get("slug")),
        category=_category(raw, event, market_tags, event_tags),
        tags=tuple(dict.fromkeys(market_tags + event_tags)),
        end_date=parse_gamma_datetime(raw.get("endDate"))
        or parse_gamma_datetime(raw.get("endDateIso")),
        volume=_amount(raw, "volumeNum", "volume"),
        liquidity=_amount(raw, "liquidityNum", "liquidity"),
        outcomes=tuple(outcomes),
        yes_price=yes_price,
        status=status,
        resolved_outcome=resolved_outcome,
        closed_at=parse_gamma_datetime(raw.get("closedTime")),
    )


def _outcomes(raw: Mapping[str, Any]) -> list[str]:
    try:
        outcomes = decode_json_list(raw.get("outcomes"), "outcomes")
    except ValueError as exc:
        raise _Skip(str(exc)) from exc
    if not outcomes:
        raise _Skip("missing outcomes")
    if not all(isinstance(name, str) for name in outcomes):
        raise _Skip(f"outcomes are not strings: {_short.repr(outcomes)}")
    names = sorted(name.strip().lower() for name in outcomes)
    if names != ["no", "yes"]:
        raise _Skip(f"outcomes are not a Yes/No pair: {_short.repr(outcomes)}")
    return outcomes


def _prices(raw: Mapping[str, Any], n_outcomes: int) -> list[float] | None:
    """The outcome prices as floats, or None when Gamma gives none."""
    try:
        prices = decode_json_list(raw.get("outcomePrices"), "outcomePrices")
    except ValueError as exc:
        raise _Skip(str(exc)) from exc
    if not prices:
        return None
    if len(prices) != n_outcomes:
        raise _Skip(f"outcomePrices has {len(prices)} entries for {n_outcomes} outcomes")
    values = []
    for price in prices:
        value = _to_float(price)
        if value is None or not 0.0 <= value <= 1.0:
            raise _Skip(f"outcomePrices is not a list of prices in [0, 1]: {_short.repr(prices)}")
        values.append(value)
    return values


def _yes_price(prices: list[float] | None, yes_index: int) -> float | None:
    if prices is None or all(price == 0.0 for price in prices):
        return None  # ["0", "0"]: no meaningful price
    return prices[yes_index]


def _status(
    raw: Mapping[str, Any], outcomes: list[str], prices: list[float] | None
) -> tuple[MarketStatus, str | None]:
    uma = raw.get("umaResolutionStatus")
    if isinstance(uma, str) and uma.strip().lower() == "resolved":
        winners = [
            name
            for name, price in zip(outcomes, prices or [], strict=False)
            if abs(price - 1.0) < _PRICE_EPSILON
        ]
        outcome = winners[0].strip().lower() if len(winners) == 1 else "void"
        return MarketStatus.RESOLVED, outcome
    if _truthy(raw.get("closed")):
        return MarketStatus.CLOSED, None
    return MarketStatus.OPEN, None


def _first_event(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    events = raw.get("events")
    if isinstance(events, list) and events and isinstance(events[0], Mapping):
        return events[0]
    return None


def _tag_labels(tags: object) -> list[str]:
    """Labels of a Gamma `tags` list (objects with `label`, or plain strings), in order."""
    if not isinstance(tags, list):
        return []
    labels: list[str] = []
    for tag in tags:
        label = tag.get("label") if isinstance(tag, Mapping) else tag
        if isinstance(label, str) and label.strip():
            labels.append(label.strip())
    return list(dict.fromkeys(labels))


def _category(
    raw: Mapping[str, Any],
    event: Mapping[str, Any] | None,
    market_tags: list[str],
    event_tags: list[str],
) -> str | None:
    """`category`, else the event's `category`, else the first market tag, else event tag."""
    for candidate in (raw.get("category"), event.get("category") if event else None):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    for labels in (market_tags, event_tags):
        if labels:
            return labels[0]
    return None


def _amount(raw: Mapping[str, Any], num_field: str, text_field: str) -> float:
    """Prefer the float field, fall back to the string field; missing or invalid -> 0.

    A number that is infinite or above `MAX_AMOUNT` is corrupt, not missing: the market is
    skipped rather than stored with a made-up volume.
    """
    for field in (num_field, text_field):
        value = _to_float(raw.get(field))
        if value is not None and (math.isinf(value) or value > MAX_AMOUNT):
            raise _Skip(f"{field} is out of range: {_short.repr(raw.get(field))}")
        if value is not None and value >= 0:
            return value
    return 0.0


def _to_float(value: object) -> float | None:
    """A JSON number or numeric string as a float: None when it is not a number (or NaN),
    +/-inf when it is too large for a float (`float(10**400)` would raise OverflowError)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf if value > 0 else -math.inf
    elif isinstance(value, str):
        try:
            number = float(value.strip())  # "1e400" and 400 digits give inf, not an error
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(number) else number


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""
