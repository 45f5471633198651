"""The one prediction code path: for a set of markets and one model, ask the forecaster,
validate, store idempotently, dead-letter what fails, respect the spend cap.

Used by the daily batch (`predictions` asset) and by on-demand requests and sessions.
Concurrency: `max_in_flight` workers share one queue; the forecaster's own limiter keeps
the request rate and backs the whole model off on 429s. Every prediction is committed as
soon as it arrives, so a killed run loses nothing it finished, and a re-run asks only for
what is missing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import RetryStats
from prediction_pipeline.core.forecast import MarketContext
from prediction_pipeline.services.forecasters import Forecaster, close_forecaster
from prediction_pipeline.store import predictions as prediction_store

logger = logging.getLogger(__name__)


class FatalForecastError(RuntimeError):
    """An error no other market would avoid (bad API key, no credits): stop the batch."""


@dataclass
class PredictionTask:
    model: str
    day: dt.date
    contexts: list[MarketContext]
    web_search: bool = False
    max_in_flight: int = 4
    max_cost_usd: float | None = None
    origin: str = prediction_store.BATCH
    request_id: str | None = None  # origin "request": the idempotency key is the request
    session_id: str | None = None  # origin "session": the key is (session, model)
    experiment_tag: str | None = None
    experiment_notes: str | None = None
    run_id: str | None = None


@dataclass
class PredictionReport:
    selected: int = 0
    predicted: int = 0
    skipped_existing: int = 0
    skipped_budget: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source id, error)
    stats: RetryStats = field(default_factory=RetryStats)
    fatal: str | None = None
    elapsed_s: float = 0.0

    @property
    def attempted(self) -> int:
        return self.predicted + self.failed

    @property
    def failure_share(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    def latency_percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    def metadata(self) -> dict:
        http = self.stats.as_metadata()
        return {
            "selected": self.selected,
            "predicted": self.predicted,
            "skipped_existing": self.skipped_existing,
            "skipped_budget": self.skipped_budget,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "latency_p50_ms": round(self.latency_percentile(50), 1),
            "latency_p95_ms": round(self.latency_percentile(95), 1),
            "retries": http.get("http_retries", 0),
            "http_429s": http.get("http_429s", 0),
            "elapsed_s": round(self.elapsed_s, 2),
        }


def _is_fatal(exc: BaseException, fatal_types: tuple[type[BaseException], ...]) -> bool:
    return isinstance(exc, (FatalForecastError, *fatal_types))


async def run_predictions(
    engine: sa.Engine,
    forecaster: Forecaster,
    task: PredictionTask,
    *,
    fatal_errors: tuple[type[BaseException], ...] = (),
    log: logging.Logger | Callable = logger,
) -> PredictionReport:
    """Predict every market of `task` not stored yet. Never raises for one market's failure:
    it is dead-lettered. Raises nothing either for fatal errors: `report.fatal` says why the
    batch stopped, and the caller decides (the asset fails the partition)."""
    started = time.monotonic()
    report = PredictionReport(selected=len(task.contexts))
    with engine.connect() as conn:
        if task.origin == prediction_store.BATCH:
            done = prediction_store.predicted_market_ids(conn, task.model, task.day)
        else:
            linked = prediction_store.linked_prediction(
                conn, task.model, request_id=task.request_id, session_id=task.session_id
            )
            done = {linked.market_id} if linked else set()
        spent = prediction_store.spent_usd(conn, task.model, task.day)
    todo = [ctx for ctx in task.contexts if ctx.market_id not in done]
    report.skipped_existing = len(task.contexts) - len(todo)
    queue: asyncio.Queue[MarketContext] = asyncio.Queue()
    for ctx in todo:
        queue.put_nowait(ctx)
    budget = {"spent": spent}
    stop = asyncio.Event()

    def over_budget() -> bool:
        return task.max_cost_usd is not None and budget["spent"] >= task.max_cost_usd

    async def worker() -> None:
        while not queue.empty() and not stop.is_set():
            ctx = queue.get_nowait()
            if over_budget():
                report.skipped_budget += 1
                _dead_letter(
                    engine,
                    task,
                    ctx,
                    "budget",
                    "BudgetExhausted",
                    f"spend cap {task.max_cost_usd} USD reached",
                    0,
                )
                continue
            began = time.monotonic()
            try:
                result = await forecaster.forecast(
                    ctx, web_search=task.web_search, stats=report.stats
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one market's failure never fails the batch
                if _is_fatal(exc, fatal_errors):
                    report.fatal = f"{type(exc).__name__}: {exc}"
                    stop.set()
                    queue.put_nowait(ctx)  # not attempted in earnest: leave it for a re-run
                    return
                report.failed += 1
                report.failures.append((ctx.source_id, f"{type(exc).__name__}: {exc}"))
                _dead_letter(
                    engine,
                    task,
                    ctx,
                    "error",
                    type(exc).__name__,
                    str(exc),
                    getattr(exc, "attempts", 1),
                )
                continue
            latency = result.latency_ms or (time.monotonic() - began) * 1000
            with engine.begin() as conn:
                new_id = prediction_store.store_prediction(
                    conn,
                    ctx,
                    task.model,
                    result.model_copy(update={"latency_ms": latency}),
                    origin=task.origin,
                    request_id=task.request_id,
                    session_id=task.session_id,
                    experiment_tag=task.experiment_tag,
                    experiment_notes=task.experiment_notes,
                    run_id=task.run_id,
                )
            if new_id is None:  # another run stored it meanwhile: keep exactly one
                report.skipped_existing += 1
                continue
            report.predicted += 1
            report.prompt_tokens += result.prompt_tokens
            report.completion_tokens += result.completion_tokens
            report.cost_usd += result.cost_usd
            budget["spent"] += result.cost_usd
            report.latencies_ms.append(latency)

    workers = max(1, min(task.max_in_flight, len(todo)))
    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        await close_forecaster(forecaster)
    report.elapsed_s = time.monotonic() - started
    return report


def _dead_letter(
    engine: sa.Engine,
    task: PredictionTask,
    ctx: MarketContext,
    kind: str,
    error_type: str,
    error: str,
    attempts: int,
) -> None:
    with engine.begin() as conn:
        prediction_store.record_failure(
            conn,
            ctx.market_id,
            task.model,
            task.day,
            kind=kind,
            error_type=error_type,
            error=error,
            attempts=attempts,
            origin=task.origin,
            run_id=task.run_id,
        )


def market_contexts(
    conn: sa.Connection, rows: list, day: dt.date, history_days: int = 14
) -> list[MarketContext]:
    """MarketContexts for candidate rows (see store.predictions.candidate_markets)."""
    history = prediction_store.price_history(conn, [r.id for r in rows], day, history_days)
    return [
        MarketContext(
            market_id=r.id,
            source_id=r.source_id,
            question=r.question,
            description=r.description or "",
            category=r.category,
            end_date=r.end_date,
            day=day,
            market_price=r.yes_price,
            price_history=tuple(history.get(r.id, ())),
        )
        for r in rows
    ]
