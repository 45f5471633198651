"""What the daily batch of one (day, model) partition forecasts: the model's registry entry and
the selected markets with their price history, and the partition's latest rows for a preview."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.core.forecast import MarketContext
from prediction_pipeline.core.selection import select_markets
from prediction_pipeline.services.predict import market_contexts
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store.models import ModelSpec


class BatchNotReady(Exception):
    """The partition cannot run as things stand (model unknown or disabled, no markets):
    retrying would fail the same way until an operator acts, as the message says."""


@dataclass(frozen=True)
class BatchPlan:
    spec: ModelSpec
    contexts: list[MarketContext]


def plan_batch(
    conn: sa.Connection,
    model: str,
    day: dt.date,
    *,
    top_markets_count: int,
    target_days_from_now: float,
    end_date_range_hours: float,
    exclude_categories: Sequence[str],
) -> BatchPlan:
    """The registry entry of `model` and the markets to forecast on `day`; raises
    BatchNotReady when the model is not registered or disabled, or no markets are stored."""
    spec = model_store.get_model(conn, model)
    if spec is None:
        raise BatchNotReady(
            f"model {model!r} is not in the registry: `prediction-pipeline models add {model}`"
        )
    if not spec.enabled:
        raise BatchNotReady(
            f"model {model!r} is disabled: `prediction-pipeline models enable {model}`"
        )
    candidates = prediction_store.candidate_markets(conn, day)
    if not candidates:
        raise BatchNotReady(
            f"no open markets stored for {day}: materialize `markets` for {day} first"
        )
    chosen = select_markets(
        candidates,
        day,
        top_markets_count=top_markets_count,
        target_days_from_now=target_days_from_now,
        end_date_range_hours=end_date_range_hours,
        exclude_categories=exclude_categories,
    )
    return BatchPlan(spec=spec, contexts=market_contexts(conn, chosen, day))


def recent_predictions(conn: sa.Connection, model: str, day: dt.date, limit: int) -> list[sa.Row]:
    """The partition's latest stored predictions, newest first, with source id and question."""
    return prediction_store.recent_predictions(conn, model, day, limit=limit)
