"""Polymarket Gamma client: active markets by volume, and look-ups by conditionId.

Uses `GET /markets/keyset` (the legacy offset-paginated `GET /markets` is deprecated):
`limit` <= 100, the cursor goes back as `after_cursor`, a page is
``{"markets": [...], "next_cursor": ...}`` and the listing ends when `next_cursor` is null or
empty, or a page has no markets.

Every request goes through the shared retry policy (`clients.http_retry`). A malformed *page*
(not JSON, nested too deeply to decode, no `markets` list) or a non-retryable status raises
`GammaError`; a malformed *market* (huge numbers, hostile JSON-string fields included) is
skipped by `core.gamma` and counted in `MarketBatch.skipped`. Pages are decoded with
`core.gamma.loads_bounded`, so a number of any length in one record cannot fail the page.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx

from prediction_pipeline.clients.http_retry import (
    RetryableHTTPError,
    RetryPolicy,
    RetryStats,
    send_with_retry,
)
from prediction_pipeline.core.batching import batched
from prediction_pipeline.core.gamma import loads_bounded, parse_markets
from prediction_pipeline.core.markets import MarketBatch

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://gamma-api.polymarket.com"
DEFAULT_TIMEOUT_SECONDS = 20.0
MAX_PAGE_SIZE = 100  # the keyset endpoint's cap on `limit`
DEFAULT_CONDITION_ID_CHUNK = 50
KEYSET_PATH = "/markets/keyset"

Params = list[tuple[str, str]]


class GammaError(RuntimeError):
    """Gamma answered with an error status, a malformed page, or not at all."""

    def __init__(self, message: str, *, path: str, status: int | None = None) -> None:
        self.path = path
        self.status = status
        super().__init__(message)


class GammaClient:
    """Synchronous Gamma client over `httpx.Client`. Use as a context manager or `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry_policy: RetryPolicy | None = None,
        stats: RetryStats | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """`http_client` replaces the client built from `base_url`/`timeout` (the caller then
        owns it); `sleep` replaces `time.sleep` between retries (tests)."""
        self.retry_policy = retry_policy or RetryPolicy()
        self.stats = stats if stats is not None else RetryStats()
        self._sleep = sleep
        self._owns_client = http_client is None
        self._http = http_client or httpx.Client(
            base_url=base_url,
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": "prediction-pipeline"},
        )

    def __enter__(self) -> GammaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self._http.close()

    # -- listings -------------------------------------------------------------------------

    def fetch_active_markets(
        self,
        limit: int | None = None,
        end_date_min: dt.datetime | dt.date | str | None = None,
        end_date_max: dt.datetime | dt.date | str | None = None,
        order: str = "volumeNum",
        ascending: bool = False,
        page_size: int = MAX_PAGE_SIZE,
    ) -> MarketBatch:
        """Open, active markets in `order` (largest volume first by default), at most `limit`.

        Markets are deduplicated by conditionId across pages; skipped records (malformed,
        non-Yes/No, duplicates) are reported in `MarketBatch.skipped` and do not count
        towards `limit`.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        params: Params = [
            ("closed", "false"),
            ("active", "true"),
            ("order", order),
            ("ascending", _bool(ascending)),
        ]
        if end_date_min is not None:
            params.append(("end_date_min", _iso(end_date_min)))
        if end_date_max is not None:
            params.append(("end_date_max", _iso(end_date_max)))

        batch = MarketBatch()
        if limit == 0:
            return batch
        seen: set[str] = set()
        pages = self.iter_market_pages(
            params,
            page_size=page_size,
            remaining=None if limit is None else lambda: limit - len(batch.markets),
        )
        for page in pages:
            parsed = parse_markets(page, seen_ids=seen)
            batch.markets.extend(parsed.markets)
            batch.skipped.extend(parsed.skipped)
            if limit is not None and len(batch.markets) >= limit:
                del batch.markets[limit:]
                break
        _log_skipped("active markets", batch)
        return batch

    def fetch_markets_by_condition_ids(
        self, condition_ids: Iterable[str], *, chunk_size: int = DEFAULT_CONDITION_ID_CHUNK
    ) -> MarketBatch:
        """Current state of the given markets, whether open, closed or resolved.

        Used for markets we hold that left the active list. Ids go in chunks of `chunk_size`
        as repeated `condition_ids` query parameters. The keyset endpoint is asked twice per
        chunk, once with `closed=false` and once with `closed=true`, rather than relying on
        what it does when `closed` is omitted: the union covers both states whatever the
        server's default. Records for ids we did not ask for are dropped; ids Gamma does not
        know are simply absent from the result.
        """
        if not 1 <= chunk_size <= MAX_PAGE_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {MAX_PAGE_SIZE}")
        wanted = list(dict.fromkeys(cid.strip() for cid in condition_ids if cid and cid.strip()))
        batch = MarketBatch()
        seen: set[str] = set()
        for chunk in batched(wanted, chunk_size):
            chunk_set = set(chunk)
            for closed in ("false", "true"):
                params: Params = [("condition_ids", cid) for cid in chunk]
                params.append(("closed", closed))
                # At most len(chunk) markets can match: a server ignoring the filter must not
                # make us walk the whole catalogue.
                max_pages = -(-len(chunk) // MAX_PAGE_SIZE) + 1
                for page in self.iter_market_pages(params, max_pages=max_pages):
                    relevant = [item for item in page if _wanted(item, chunk_set, seen)]
                    parsed = parse_markets(relevant, seen_ids=seen)
                    batch.markets.extend(parsed.markets)
                    batch.skipped.extend(parsed.skipped)
        missing = len(wanted) - len({m.source_id for m in batch.markets})
        if missing:
            logger.info("Gamma: %d of %d condition ids not found", missing, len(wanted))
        _log_skipped("markets by condition id", batch)
        return batch

    # -- pagination -----------------------------------------------------------------------

    def iter_market_pages(
        self,
        params: Sequence[tuple[str, str]],
        *,
        page_size: int = MAX_PAGE_SIZE,
        max_pages: int | None = None,
        remaining: Callable[[], int] | None = None,
    ) -> Iterator[list[Any]]:
        """Yield the raw `markets` list of each keyset page for `params`.

        Follows `next_cursor` (sent back as `after_cursor`) until it is null/empty, a page is
        empty, or `max_pages` pages were read. `remaining`, when given, says how many more
        markets the caller wants; the page `limit` is shrunk to it.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        cursor: str | None = None
        seen_cursors: set[str] = set()
        pages = 0
        while max_pages is None or pages < max_pages:
            limit = page_size if remaining is None else max(1, min(page_size, remaining()))
            query: Params = [*params, ("limit", str(limit))]
            if cursor:
                query.append(("after_cursor", cursor))
            markets, cursor = self._get_page(query)
            pages += 1
            if not markets:
                return
            yield markets
            if not cursor:
                return
            if cursor in seen_cursors:
                logger.warning("Gamma: %s returned a cursor twice; stopping", KEYSET_PATH)
                return
            seen_cursors.add(cursor)

    def _get_page(self, query: Params) -> tuple[list[Any], str | None]:
        status, data = self._get_json(KEYSET_PATH, query)
        if not isinstance(data, dict) or not isinstance(data.get("markets"), list):
            shape = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise GammaError(
                f"Gamma GET {KEYSET_PATH}: malformed page, expected an object with a "
                f"'markets' list, got {shape}",
                path=KEYSET_PATH,
                status=status,
            )
        next_cursor = data.get("next_cursor")
        if next_cursor is not None and not isinstance(next_cursor, str):
            next_cursor = str(next_cursor)
        return data["markets"], next_cursor or None

    def _get_json(self, path: str, query: Params) -> tuple[int, Any]:
        """GET `path` under the retry policy: (status, decoded JSON) or `GammaError`."""
        policy = self.retry_policy
        try:
            response = send_with_retry(
                self._http,
                "GET",
                path,
                params=query,
                policy=policy,
                stats=self.stats,
                sleep=self._sleep,
            )
        except RetryableHTTPError as exc:
            raise GammaError(
                f"Gamma GET {path}: HTTP {exc.status_code} after {policy.max_attempts} attempts",
                path=path,
                status=exc.status_code,
            ) from exc
        except httpx.HTTPError as exc:
            raise GammaError(
                f"Gamma GET {path}: {type(exc).__name__} ({exc}) after retries", path=path
            ) from exc
        if response.status_code >= 400:
            raise GammaError(
                f"Gamma GET {path}: HTTP {response.status_code}: {response.text[:200]!r}",
                path=path,
                status=response.status_code,
            )
        try:
            return response.status_code, loads_bounded(response.content)
        except ValueError as exc:  # JSONDecodeError, undecodable bytes
            raise GammaError(
                f"Gamma GET {path}: response is not JSON "
                f"(content-type {response.headers.get('content-type')!r})",
                path=path,
                status=response.status_code,
            ) from exc
        except RecursionError as exc:
            raise GammaError(
                f"Gamma GET {path}: response is nested too deeply to decode",
                path=path,
                status=response.status_code,
            ) from exc


def _wanted(item: object, wanted: set[str], seen: set[str]) -> bool:
    """Keep records for ids we asked for and have not got yet (and non-objects, to count them
    as skipped); a server ignoring `closed` must not turn every market into a duplicate."""
    if not isinstance(item, dict):
        return True
    cid = item.get("conditionId")
    if not isinstance(cid, str):  # not an id we asked for (and a list would be unhashable)
        return False
    return cid in wanted and cid not in seen


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _iso(value: dt.datetime | dt.date | str) -> str:
    """ISO 8601 in UTC with `Z` (naive datetimes and dates are taken as UTC)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_skipped(what: str, batch: MarketBatch) -> None:
    if batch.skipped:
        logger.info(
            "Gamma %s: %d markets, %d skipped (first: %s: %s)",
            what,
            len(batch.markets),
            len(batch.skipped),
            batch.skipped[0].source_id,
            batch.skipped[0].reason,
        )
