"""The daily watchlist digest as pure domain: what goes in it, how it reads, how it is signed.

No database, no network, no Dagster, one job per module:

- `model`: the plain records the store hands in (`Recipient`, `WatchItem`, `MarketState`,
  `PriceAt`, `ModelForecast`, `ModelScore`) and the digest's lines (`Digest`);
- `build`: `build_digest` turns them into a `Digest` (or says there is nothing new);
- `render`: `DigestRenderer` renders it with Jinja2 (the HTML part autoescaped: market text
  comes from outside);
- `mime`: one multipart/alternative message with a stable Message-ID per (user, day) and
  RFC 8058 one-click unsubscribe headers;
- `tokens`: the signed unsubscribe tokens and links.

The names below are the package's public API.
"""

from prediction_pipeline.core.digests.build import (
    DEFAULT_MIN_PRICE_CHANGE,
    DEFAULT_PUBLIC_URL,
    SETTLED,
    baseline_day,
    build_digest,
    market_url,
)
from prediction_pipeline.core.digests.mime import (
    DEFAULT_MESSAGE_ID_DOMAIN,
    DEFAULT_SENDER,
    RenderedDigest,
    build_message,
    digest_message_id,
)
from prediction_pipeline.core.digests.model import (
    Digest,
    ForecastLine,
    MarketLine,
    MarketState,
    ModelForecast,
    ModelScore,
    PreviousDigest,
    PriceAt,
    Recipient,
    ScoreLine,
    SettledLine,
    WatchItem,
)
from prediction_pipeline.core.digests.render import DigestRenderer, pct, points
from prediction_pipeline.core.digests.tokens import (
    DEV_UNSUBSCRIBE_SECRET,
    InvalidUnsubscribeToken,
    make_unsubscribe_token,
    unsubscribe_token_user_id,
    unsubscribe_url,
    verify_unsubscribe_token,
)

__all__ = [
    "DEFAULT_MESSAGE_ID_DOMAIN",
    "DEFAULT_MIN_PRICE_CHANGE",
    "DEFAULT_PUBLIC_URL",
    "DEFAULT_SENDER",
    "DEV_UNSUBSCRIBE_SECRET",
    "SETTLED",
    "Digest",
    "DigestRenderer",
    "ForecastLine",
    "InvalidUnsubscribeToken",
    "MarketLine",
    "MarketState",
    "ModelForecast",
    "ModelScore",
    "PreviousDigest",
    "PriceAt",
    "Recipient",
    "RenderedDigest",
    "ScoreLine",
    "SettledLine",
    "WatchItem",
    "baseline_day",
    "build_digest",
    "build_message",
    "digest_message_id",
    "make_unsubscribe_token",
    "market_url",
    "pct",
    "points",
    "unsubscribe_token_user_id",
    "unsubscribe_url",
    "verify_unsubscribe_token",
]
