"""The one prediction code path: for a set of markets and one model, ask the forecaster,
validate, store idempotently, dead-letter what fails, respect the spend cap.

Spend: every provider call reserves against the (model, day) cap in the app database before
it is sent and records its cost after (services.spend, store.spend), so concurrent runs and
processes share one cap, and invalid answers, re-asks and billed failures count. Once a call
is refused for the cap, the rest of the batch is recorded as skipped for budget.

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
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from prediction_pipeline.clients.http_retry import RetryStats
from prediction_pipeline.core.forecast import ForecastResult, MarketContext
from prediction_pipeline.services.forecasters import Forecaster
from prediction_pipeline.services.spend import SpendCapReached, SpendGuard
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import spend as spend_store

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
    max_cost_usd: float | None = None  # the (model, day) spend cap, shared by every run
    call_estimate_usd: float | None = None  # reserved per call; None: from the model's history
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
    cost_usd: float = 0.0  # every call of this run: stored, invalid, failed or refused later
    day_spent_usd: float = 0.0  # the model's spend on the day, all runs, after this one
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
            "day_spent_usd": round(self.day_spent_usd, 6),
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
) -> PredictionReport:
    """Predict every market of `task` not stored yet. Never raises for one market's failure:
    it is dead-lettered. Raises nothing either for fatal errors: `report.fatal` says why the
    batch stopped, and the caller decides (the asset fails the partition)."""
    started = time.monotonic()
    report = PredictionReport(selected=len(task.contexts))
    todo = _not_stored(engine, task)
    report.skipped_existing = len(task.contexts) - len(todo)
    batch = _Batch(engine, forecaster, task, report, fatal_errors, todo)
    workers = max(1, min(task.max_in_flight, len(todo)))
    try:
        await asyncio.gather(*(batch.worker() for _ in range(workers)))
    finally:
        await forecaster.aclose()
    with engine.connect() as conn:
        report.day_spent_usd = spend_store.spent_usd(conn, task.model, task.day)
    report.elapsed_s = time.monotonic() - started
    return report


def _not_stored(engine: sa.Engine, task: PredictionTask) -> list[MarketContext]:
    """The task's markets without a prediction yet: for the batch, the model's predictions
    of the day; for a request or session, the one prediction linked to it."""
    with engine.connect() as conn:
        if task.origin == prediction_store.BATCH:
            done = prediction_store.predicted_market_ids(conn, task.model, task.day)
        else:
            linked = prediction_store.linked_prediction(
                conn, task.model, request_id=task.request_id, session_id=task.session_id
            )
            done = {linked.market_id} if linked else set()
    return [ctx for ctx in task.contexts if ctx.market_id not in done]


class _Batch:
    """What the workers of one run share: the queue of markets, the stop and over-budget
    flags, the spend guard and the report they all add to."""

    def __init__(
        self,
        engine: sa.Engine,
        forecaster: Forecaster,
        task: PredictionTask,
        report: PredictionReport,
        fatal_errors: tuple[type[BaseException], ...],
        todo: list[MarketContext],
    ) -> None:
        self.engine, self.forecaster, self.task = engine, forecaster, task
        self.report, self.fatal_errors = report, fatal_errors
        self.queue: asyncio.Queue[MarketContext] = asyncio.Queue()
        for ctx in todo:
            self.queue.put_nowait(ctx)
        self.stop = asyncio.Event()  # a fatal error: leave the rest for a re-run
        self.over_budget = asyncio.Event()  # a call was refused for the cap: skip the rest
        self.guard = SpendGuard(
            engine,
            task.model,
            task.day,
            task.max_cost_usd,
            run_id=task.run_id,
            estimate_usd=task.call_estimate_usd,
        )

    async def worker(self) -> None:
        while not self.queue.empty() and not self.stop.is_set():
            ctx = self.queue.get_nowait()
            if self.over_budget.is_set():
                self._skip_for_budget(ctx)
                continue
            await self._predict(ctx)

    async def _predict(self, ctx: MarketContext) -> None:
        """One market: ask, then store the answer or account for the failure."""
        began = time.monotonic()
        try:
            result = await self.forecaster.forecast(
                ctx, web_search=self.task.web_search, stats=self.report.stats, spend=self.guard
            )
        except asyncio.CancelledError:
            raise
        except SpendCapReached as exc:
            self.report.cost_usd += exc.cost_usd  # re-asks refused after paid attempts
            self.over_budget.set()
            self._skip_for_budget(ctx)
            return
        except Exception as exc:  # one market's failure never fails the batch
            self._failed(ctx, exc)
            return
        self.report.cost_usd += result.cost_usd  # paid, stored or not
        latency = result.latency_ms or (time.monotonic() - began) * 1000
        self._store(ctx, result.model_copy(update={"latency_ms": latency}))

    def _store(self, ctx: MarketContext, result: ForecastResult) -> None:
        task, report = self.task, self.report
        with self.engine.begin() as conn:
            new_id = prediction_store.store_prediction(
                conn,
                ctx,
                task.model,
                result,
                origin=task.origin,
                request_id=task.request_id,
                session_id=task.session_id,
                experiment_tag=task.experiment_tag,
                experiment_notes=task.experiment_notes,
                run_id=task.run_id,
            )
        if new_id is None:  # another run stored it meanwhile: keep exactly one
            report.skipped_existing += 1
            return
        report.predicted += 1
        report.prompt_tokens += result.prompt_tokens
        report.completion_tokens += result.completion_tokens
        report.latencies_ms.append(result.latency_ms)

    def _failed(self, ctx: MarketContext, exc: Exception) -> None:
        report = self.report
        # Invalid answers and billed failures were paid for (ForecastAttemptsExhausted,
        # OpenRouterError and others carry `cost_usd`).
        report.cost_usd += getattr(exc, "cost_usd", 0.0) or 0.0
        report.prompt_tokens += getattr(exc, "prompt_tokens", 0) or 0
        report.completion_tokens += getattr(exc, "completion_tokens", 0) or 0
        if _is_fatal(exc, self.fatal_errors):
            report.fatal = f"{type(exc).__name__}: {exc}"
            self.stop.set()
            self.queue.put_nowait(ctx)  # not attempted in earnest: leave it for a re-run
            return
        report.failed += 1
        report.failures.append((ctx.source_id, f"{type(exc).__name__}: {exc}"))
        _dead_letter(
            self.engine,
            self.task,
            ctx,
            "error",
            type(exc).__name__,
            str(exc),
            getattr(exc, "attempts", 1),
        )

    def _skip_for_budget(self, ctx: MarketContext) -> None:
        self.report.skipped_budget += 1
        _dead_letter(
            self.engine,
            self.task,
            ctx,
            "budget",
            "BudgetExhausted",
            f"spend cap {self.task.max_cost_usd} USD reached",
            0,
        )


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
