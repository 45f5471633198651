"""Building one chunk's digests: the per-market facts of the day (loaded once per market and
shared by every user of the run), each user's digest, and the rendered message to send."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.clients.email import OutgoingEmail
from prediction_pipeline.core import digests as core
from prediction_pipeline.store import digest_content as store_content


@dataclass
class DigestJob:
    """One rendered message, ready for a sender thread."""

    user_id: int
    email: str
    outgoing: OutgoingEmail


class DigestContentCache:
    """Per-market facts of the day, shared by every user of the run (loaded once per market),
    and baseline prices per (market, day)."""

    def __init__(self, day: dt.date) -> None:
        self.day = day
        self.states: dict[int, core.MarketState] = {}
        self.forecasts: dict[int, list[core.ModelForecast]] = {}
        self.scores: dict[int, list[core.ModelScore]] = {}
        self.baselines: dict[tuple[int, dt.date], core.PriceAt] = {}
        self._loaded: set[int] = set()
        self._baseline_loaded: set[tuple[int, dt.date]] = set()

    def load(
        self,
        conn: sa.Connection,
        items: dict[int, list[core.WatchItem]],
        previous: dict[int, core.PreviousDigest],
    ) -> None:
        markets = {item.market_id for user_items in items.values() for item in user_items}
        new = sorted(markets - self._loaded)
        if new:
            self.states.update(store_content.market_states(conn, new, self.day))
            self.forecasts.update(store_content.latest_forecasts(conn, new, self.day))
            settled = [m for m in new if m in self.states and self.states[m].status in core.SETTLED]
            self.scores.update(store_content.model_scores(conn, settled))
            self._loaded.update(new)
        wanted: dict[dt.date, set[int]] = {}
        for user_id, user_items in items.items():
            for item in user_items:
                since = core.baseline_day(item, previous.get(user_id))[0]
                if (item.market_id, since) not in self._baseline_loaded:
                    wanted.setdefault(since, set()).add(item.market_id)
        for since, ids in wanted.items():
            prices = store_content.prices_as_of(conn, sorted(ids), since)
            for market_id in ids:
                self._baseline_loaded.add((market_id, since))
                if market_id in prices:
                    self.baselines[(market_id, since)] = prices[market_id]


def build_digests(
    users: Iterable[store_content.DigestUser],
    day: dt.date,
    previous: Mapping[int, core.PreviousDigest],
    items: Mapping[int, list[core.WatchItem]],
    cache: DigestContentCache,
    *,
    public_url: str,
    min_price_change: float,
) -> tuple[dict[int, core.Digest], list[int]]:
    """The digests of `users` that have news ({user id: digest}), and the users with none."""
    digests: dict[int, core.Digest] = {}
    nothing_new: list[int] = []
    for user in users:
        digest = core.build_digest(
            core.Recipient(user.user_id, user.email, user.name),
            day,
            previous.get(user.user_id),
            items.get(user.user_id, ()),
            cache.states,
            cache.baselines,
            cache.forecasts,
            cache.scores,
            public_url=public_url,
            min_price_change=min_price_change,
        )
        if digest.has_news:
            digests[user.user_id] = digest
        else:
            nothing_new.append(user.user_id)
    return digests, nothing_new


def render_job(
    renderer: core.DigestRenderer, digest: core.Digest, sender: str
) -> tuple[DigestJob, core.RenderedDigest]:
    """The message of `digest` from the envelope address `sender`, and what was rendered."""
    rendered = renderer.render(digest)
    message = core.build_message(rendered, digest.recipient, renderer.sender)
    user = digest.recipient
    outgoing = OutgoingEmail(sender, user.email, rendered.message_id, message.as_bytes())
    return DigestJob(user.user_id, user.email, outgoing), rendered


def redacted_preview(renderer: core.DigestRenderer, rendered: core.RenderedDigest) -> str:
    """The text of a rendered digest with its unsubscribe token left out (for run metadata)."""
    return rendered.text.replace(
        rendered.unsubscribe_url,
        f"{renderer.public_url.rstrip('/')}/unsubscribe?token=<redacted>",
    )
