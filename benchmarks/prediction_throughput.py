"""Prediction throughput: the Dagster-era prediction path against the old serverless loop.

Both approaches talk to the same kind of provider: a `FakeOpenRouterServer` on loopback in
enforcing mode (at most `--rps` requests per second, token bucket; at most `--in-flight`
concurrent requests; excess answered by 429; lognormal latency; a seeded share of random
500/502/503).

- new: the production path, unchanged: `Forecasters(...).build(spec)` (per-model
  `ModelLimiter` at the registry's requests_per_second / max_in_flight, tenacity retries
  honouring Retry-After) driven by `services.predict.run_predictions` with
  `max_in_flight` workers, storing each prediction idempotently in a throwaway SQLite app
  database. Then the same task again, which must send zero requests (every market is stored).
- old: the serverless design it replaces: three workers, one call per market, no retries, a
  fixed 2 s sleep between a worker's model calls. It is run on a smaller sample (its rate does
  not depend on the sample size), to keep the benchmark short.

    .venv/bin/python -m benchmarks.prediction_throughput [--rps 20 --in-flight 8 --markets 400
        --latency 0.25 --fault-rate 0.03 --seed 7]

Prints a table and writes benchmarks/results/prediction_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from benchmarks.common import git, rounded, text_table
from prediction_pipeline.clients.http_retry import RetryPolicy, RetryStats
from prediction_pipeline.clients.openrouter import OpenRouterClient
from prediction_pipeline.core.forecast import MarketContext
from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.core.synthetic import SyntheticUniverse
from prediction_pipeline.resources import Forecasters
from prediction_pipeline.services.forecasters import OpenRouterForecaster
from prediction_pipeline.services.predict import PredictionTask, market_contexts, run_predictions
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.markets import ingest_markets
from prediction_pipeline.store.tables import predictions as predictions_table
from prediction_pipeline_tests.fakes.openrouter_server import FakeOpenRouterServer

RESULTS_PATH = Path(__file__).parent / "results" / "prediction_throughput.json"
DAY = dt.date(2026, 6, 1)  # any day after the synthetic epoch; fixed for repeatability
API_KEY = "bench"
NEW_MODEL = "bench/forecaster"
OLD_MODEL = "bench/forecaster-serverless"
OLD_WORKERS = 3
OLD_PAUSE_SECONDS = 2.0
TARGET_SHARE = 0.90

T = TypeVar("T")


@dataclass
class Settings:
    rps: float = 20.0
    in_flight: int = 8
    markets: int = 400
    latency: float = 0.25
    latency_sigma: float = 0.5
    fault_rate: float = 0.03
    seed: int = 7
    old_markets: int = 60
    workers: int | None = None  # run_predictions workers; None = C, as the asset does
    server_burst: float | None = None  # the server's token bucket; None = R (its default)


@dataclass
class Outcome:
    """One approach's figures (one row of the table)."""

    approach: str
    markets: int
    succeeded: int
    failed: int
    wall_s: float
    predictions_per_s: float
    share_of_rps: float
    server_requests: int
    server_429s: int
    retries: int
    duplicates: int
    stored_rows: int
    server_outcomes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    loop_lag_max_ms: float = 0.0
    loop_lag_p99_ms: float = 0.0
    steady_predictions_per_s: float = 0.0  # between the 5th and 95th percentile completions
    tail_s: float = 0.0  # from the 95th percentile completion to the last one
    extra: dict[str, Any] = field(default_factory=dict)


# -- setup --------------------------------------------------------------------------------


def build_database(url: str, markets: int, seed: int) -> tuple[sa.Engine, list[MarketContext]]:
    """A migrated app database holding one day of synthetic markets; the `markets` most
    liquid open ones as MarketContexts (the universe grows until it has enough)."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    size = max(300, math.ceil(markets * 1.3))
    while True:
        batch = SyntheticUniverse(size=size, seed=seed).active_markets(DAY)
        if sum(m.status == MarketStatus.OPEN for m in batch) >= markets:
            break
        size = math.ceil(size * 1.5)
    with engine.begin() as conn:
        ingest_markets(conn, batch, DAY)
    with engine.connect() as conn:
        rows = prediction_store.candidate_markets(conn, DAY)
        rows = sorted(rows, key=lambda r: (-(r.volume or 0.0), r.id))[:markets]
        contexts = market_contexts(conn, rows, DAY)
    if len(contexts) < markets:
        raise RuntimeError(f"only {len(contexts)} open markets for {markets} requested")
    return engine, contexts


def register_model(engine: sa.Engine, slug: str, settings: Settings) -> model_store.ModelSpec:
    spec = model_store.ModelSpec(
        slug=slug,
        provider=model_store.OPENROUTER_PROVIDER,
        requests_per_second=settings.rps,
        max_in_flight=settings.in_flight,
    )
    with engine.begin() as conn:
        model_store.upsert_model(conn, spec)
    with engine.connect() as conn:
        stored = model_store.get_model(conn, slug)
    assert stored is not None
    return stored


def start_server(settings: Settings) -> FakeOpenRouterServer:
    return FakeOpenRouterServer(
        api_key=API_KEY,
        rate_limit=settings.rps,
        burst=settings.server_burst,
        max_in_flight=settings.in_flight,
        latency_mean=settings.latency,
        latency_sigma=settings.latency_sigma,
        fault_rate=settings.fault_rate,
        seed=settings.seed,
    ).start()


# -- measurement helpers ------------------------------------------------------------------


def duplicates(engine: sa.Engine, model: str) -> tuple[int, int]:
    """(rows, rows - distinct (market, model, day)) of `model`'s predictions on DAY."""
    p = predictions_table
    where = (p.c.model_slug == model, p.c.day == DAY)
    keys = sa.select(p.c.market_id, p.c.model_slug, p.c.day).where(*where).distinct().subquery()
    with engine.connect() as conn:
        rows = conn.scalar(sa.select(sa.func.count()).select_from(p).where(*where)) or 0
        distinct = conn.scalar(sa.select(sa.func.count()).select_from(keys)) or 0
    return rows, rows - distinct


def completion_profile(engine: sa.Engine, model: str) -> dict[str, float]:
    """The steady rate (completions between the 5th and 95th percentile, from the rows'
    created_at) and the tail (95th percentile to last): wall-clock rates over small runs
    are dominated by ramp-up and by the last market's retry backoff."""
    p = predictions_table
    query = sa.select(p.c.created_at).where(p.c.model_slug == model, p.c.day == DAY)
    with engine.connect() as conn:
        times = sorted(conn.scalars(query))
    if len(times) < 20:
        return {}
    t = [(x - times[0]).total_seconds() for x in times]
    a, z = len(t) // 20, len(t) - 1 - len(t) // 20
    return {
        "steady_predictions_per_s": (z - a) / (t[z] - t[a]) if t[z] > t[a] else 0.0,
        "tail_s": t[-1] - t[z],
    }


def counts_since(server: FakeOpenRouterServer, before: Counter[str]) -> dict[str, int]:
    with server._lock:  # the server's counters are updated from its handler threads
        now = Counter(server.counts)
    return {k: v for k, v in sorted((now - before).items()) if v}


def server_counts(server: FakeOpenRouterServer) -> Counter[str]:
    with server._lock:
        return Counter(server.counts)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


async def watched(coro: Awaitable[T], lags: list[float], interval: float = 0.01) -> T:
    """Await `coro` while sampling how late the event loop wakes a 10 ms sleeper: a large
    lag means something blocked the loop (synchronous I/O, CPU)."""
    loop = asyncio.get_running_loop()

    async def watch() -> None:
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            lags.append(max(0.0, loop.time() - started - interval))

    watcher = asyncio.create_task(watch())
    try:
        return await coro
    finally:
        watcher.cancel()


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


# -- the new approach ---------------------------------------------------------------------


def run_new(
    engine: sa.Engine,
    server: FakeOpenRouterServer,
    contexts: list[MarketContext],
    settings: Settings,
) -> tuple[Outcome, dict[str, Any]]:
    spec = register_model(engine, NEW_MODEL, settings)
    forecasters = Forecasters(openrouter_api_key=API_KEY, openrouter_base_url=server.base_url)

    def once() -> tuple[Any, Any, list[float], dict[str, int], float]:
        # As the asset builds it: the model's budget shared through the app database.
        forecaster = forecasters.build(spec, limits_engine=engine, background=True)
        # The asset passes the registry's max_in_flight: C workers for C limiter slots.
        workers = settings.workers or spec.max_in_flight
        task = PredictionTask(model=spec.slug, day=DAY, contexts=contexts, max_in_flight=workers)
        before = server_counts(server)
        lags: list[float] = []
        report, wall = timed(
            lambda: asyncio.run(
                watched(
                    run_predictions(
                        engine, forecaster, task, fatal_errors=Forecasters.fatal_errors()
                    ),
                    lags,
                )
            )
        )
        return report, forecaster, lags, counts_since(server, before), wall

    report, forecaster, lags, seen, wall = once()
    rows, dupes = duplicates(engine, spec.slug)
    limiter = forecaster.client.limiter
    http = report.stats.as_metadata()
    outcome = Outcome(
        approach="new (run_predictions)",
        markets=len(contexts),
        succeeded=report.predicted,
        failed=report.failed,
        wall_s=wall,
        predictions_per_s=report.predicted / wall,
        share_of_rps=report.predicted / wall / settings.rps,
        server_requests=sum(seen.values()),
        server_429s=seen.get("429_rate", 0) + seen.get("429_in_flight", 0),
        retries=report.stats.retries,
        duplicates=dupes,
        stored_rows=rows,
        server_outcomes=seen,
        failures=dict(Counter(error.split(":", 1)[0] for _, error in report.failures)),
        latency_p50_ms=report.latency_percentile(50),
        latency_p95_ms=report.latency_percentile(95),
        loop_lag_max_ms=max(lags, default=0.0) * 1000,
        loop_lag_p99_ms=percentile(lags, 99) * 1000,
        **completion_profile(engine, spec.slug),
        extra={
            "workers": min(settings.workers or settings.in_flight, len(contexts)),
            "limiter_pauses": limiter.pause_count,
            "limiter_pause_seconds": round(sum(limiter.pauses), 3),
            "limiter_max_in_flight_seen": limiter.max_in_flight_seen,
            "server_max_in_flight_seen": server.max_in_flight_seen,
            "http_retry_wait_seconds": http["http_retry_wait_seconds"],
            "http_retryable_statuses": http["http_retryable_statuses"],
            "http_transport_errors": http["http_transport_errors"],
            "report_elapsed_s": round(report.elapsed_s, 3),
        },
    )

    # The same task again: everything stored is skipped, so no request leaves.
    report2, _, _, seen2, wall2 = once()
    rows2, dupes2 = duplicates(engine, spec.slug)
    requests2 = sum(seen2.values())
    rerun = {
        "server_requests": requests2,
        "expected_requests_at_most": _retry_budget(report.failed),
        "predicted": report2.predicted,
        "skipped_existing": report2.skipped_existing,
        "failed": report2.failed,
        "stored_rows": rows2,
        "duplicates": dupes2,
        "wall_s": round(wall2, 3),
        # Only the dead-lettered markets may be asked again; nothing stored twice.
        "idempotent": dupes2 == 0
        and rows2 == rows + report2.predicted
        and report2.skipped_existing == report.predicted
        and requests2 <= _retry_budget(report.failed),
    }
    return outcome, rerun


def _retry_budget(failed_markets: int) -> int:
    """A re-run asks again only for the markets that failed (dead-lettered) the first time."""
    attempts = Forecasters.model_fields["max_http_attempts"].default
    answers = Forecasters.model_fields["max_answer_attempts"].default
    return failed_markets * attempts * answers


# -- the old approach ---------------------------------------------------------------------


def run_old(
    engine: sa.Engine,
    server: FakeOpenRouterServer,
    contexts: list[MarketContext],
    settings: Settings,
) -> Outcome:
    """Three workers, one call per market (no retries, no limiter), 2 s between a worker's
    model calls; successes stored, failures only counted (the old design lost them)."""
    spec = register_model(engine, OLD_MODEL, settings)
    stats = RetryStats()
    failures: Counter[str] = Counter()
    latencies: list[float] = []
    done = {"ok": 0, "failed": 0}

    async def main() -> None:
        client = OpenRouterClient(
            API_KEY, base_url=server.base_url, retry_policy=RetryPolicy(max_attempts=1)
        )
        forecaster = OpenRouterForecaster(client, spec.slug, max_attempts=1)
        queue = deque(contexts)

        async def worker() -> None:
            while queue:
                ctx = queue.popleft()
                try:
                    result = await forecaster.forecast(ctx, stats=stats)
                except Exception as exc:
                    done["failed"] += 1
                    failures[type(exc).__name__] += 1
                else:
                    with engine.begin() as conn:
                        prediction_store.store_prediction(conn, ctx, spec.slug, result)
                    done["ok"] += 1
                    latencies.append(result.latency_ms)
                if queue:
                    await asyncio.sleep(OLD_PAUSE_SECONDS)

        try:
            await asyncio.gather(*(worker() for _ in range(OLD_WORKERS)))
        finally:
            await client.aclose()

    before = server_counts(server)
    lags: list[float] = []
    _, wall = timed(lambda: asyncio.run(watched(main(), lags)))
    seen = counts_since(server, before)
    rows, dupes = duplicates(engine, spec.slug)
    return Outcome(
        approach="old (serverless, 3 workers, 2 s sleep)",
        markets=len(contexts),
        succeeded=done["ok"],
        failed=done["failed"],
        wall_s=wall,
        predictions_per_s=done["ok"] / wall,
        share_of_rps=done["ok"] / wall / settings.rps,
        server_requests=sum(seen.values()),
        server_429s=seen.get("429_rate", 0) + seen.get("429_in_flight", 0),
        retries=stats.retries,
        duplicates=dupes,
        stored_rows=rows,
        server_outcomes=seen,
        failures=dict(failures),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        loop_lag_max_ms=max(lags, default=0.0) * 1000,
        loop_lag_p99_ms=percentile(lags, 99) * 1000,
        **completion_profile(engine, spec.slug),
        extra={"workers": OLD_WORKERS, "pause_s": OLD_PAUSE_SECONDS},
    )


# -- report -------------------------------------------------------------------------------


def table(outcomes: list[Outcome]) -> str:
    header = (
        "approach",
        "markets",
        "succeeded",
        "failed",
        "wall s",
        "pred/s",
        "steady/s",
        "share of R",
        "429s",
        "retries",
        "dupes",
    )
    rows = [
        (
            o.approach,
            str(o.markets),
            str(o.succeeded),
            str(o.failed),
            f"{o.wall_s:.1f}",
            f"{o.predictions_per_s:.2f}",
            f"{o.steady_predictions_per_s:.2f}",
            f"{o.share_of_rps:.1%}",
            str(o.server_429s),
            str(o.retries),
            str(o.duplicates),
        )
        for o in outcomes
    ]
    return text_table(header, rows)


def run(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-predictions-") as tmp:
        engine, contexts = build_database(
            f"sqlite:///{Path(tmp) / 'app.db'}", settings.markets, settings.seed
        )
        try:
            with start_server(settings) as server:
                new, rerun = run_new(engine, server, contexts, settings)
            # A fresh server with the same settings: full token bucket, counters at zero.
            with start_server(settings) as server:
                old = run_old(engine, server, contexts[: settings.old_markets], settings)
        finally:
            engine.dispose()
    # A 5xx spends a rate token too; a success holds an in-flight slot for about the latency.
    ceiling = settings.rps * (1 - settings.fault_rate)
    if settings.latency > 0:
        ceiling = min(ceiling, settings.in_flight / settings.latency)
    return {
        "benchmark": "prediction_throughput",
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.prediction_throughput " + " ".join(sys.argv[1:]),
        "settings": asdict(settings),
        "environment": {
            "git_commit": git("rev-parse", "--short", "HEAD"),
            # Production files with uncommitted changes when the figures were taken.
            "git_dirty_paths": [
                line.split(maxsplit=1)[-1]
                for line in (
                    git("status", "--porcelain", "--", "prediction_pipeline") or ""
                ).splitlines()
            ],
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            # Other work on the machine slows the event loop and so the limiter: keep an eye.
            "load_average_1m_before": load_before,
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        },
        "ceiling_predictions_per_s": round(ceiling, 3),
        "new": asdict(new),
        "new_rerun": rerun,
        "old": asdict(old),
        "ratio_new_over_old": round(new.predictions_per_s / old.predictions_per_s, 2)
        if old.predictions_per_s
        else None,
        "target": {
            "share_of_rps_min": TARGET_SHARE,
            "share_of_rps": round(new.share_of_rps, 4),
            "duplicates": new.duplicates,
            "met": new.share_of_rps >= TARGET_SHARE and new.duplicates == 0,
        },
        "total_wall_s": round(time.perf_counter() - started, 1),
    }


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    new, old, rerun = result["new"], result["old"], result["new_rerun"]
    print(
        f"Fake OpenRouter: R={s['rps']:g} req/s, C={s['in_flight']} in flight, latency mean "
        f"{s['latency']:g} s (lognormal, sigma {s['latency_sigma']:g}), faults "
        f"{s['fault_rate']:.0%}, seed {s['seed']}, server bucket "
        f"{s['server_burst'] or s['rps']:g}"
    )
    print(
        f"Old approach on the first {old['markets']} of the {new['markets']} markets "
        "(its rate does not depend on the sample size)."
    )
    print()
    print(table([Outcome(**new), Outcome(**old)]))
    print()
    ratio = result["ratio_new_over_old"]
    print(f"new / old throughput: {ratio}x" if ratio else "new / old throughput: n/a")
    print(
        f"ceiling min(R x (1 - fault rate), C / latency) = "
        f"{result['ceiling_predictions_per_s']:.2f}/s; new reached "
        f"{new['predictions_per_s'] / result['ceiling_predictions_per_s']:.1%} of it"
    )
    extra = new["extra"]
    print(
        f"new: {extra['workers']} workers, tail {new['tail_s']:.2f} s, "
        f"{new['server_requests']} requests, server outcomes {new['server_outcomes']}, "
        f"limiter pauses {extra['limiter_pauses']} ({extra['limiter_pause_seconds']} s), "
        f"retry sleep {extra['http_retry_wait_seconds']} s, latency p50/p95 "
        f"{new['latency_p50_ms']:.0f}/{new['latency_p95_ms']:.0f} ms, loop lag p99/max "
        f"{new['loop_lag_p99_ms']:.1f}/{new['loop_lag_max_ms']:.1f} ms"
    )
    print(
        f"re-run of the same task: {rerun['server_requests']} requests, "
        f"{rerun['predicted']} new predictions, {rerun['skipped_existing']} skipped as stored, "
        f"{rerun['duplicates']} duplicates ({'idempotent' if rerun['idempotent'] else 'NOT'})"
    )
    target = result["target"]
    print(
        f"target >= {target['share_of_rps_min']:.0%} of R with 0 duplicates: "
        f"{'MET' if target['met'] else 'NOT MET'} ({target['share_of_rps']:.1%}, "
        f"{target['duplicates']} duplicates); total {result['total_wall_s']} s; load average "
        f"{result['environment']['load_average_1m_before']} -> "
        f"{result['environment']['load_average_1m_after']} on {result['environment']['cpus']} CPUs"
    )


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    d = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prediction_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rps", type=float, default=d.rps, help="R: server requests/s")
    parser.add_argument("--in-flight", type=int, default=d.in_flight, help="C: server cap")
    parser.add_argument("--markets", type=int, default=d.markets, help="N: markets (new)")
    parser.add_argument("--latency", type=float, default=d.latency, help="mean latency, s")
    parser.add_argument("--latency-sigma", type=float, default=d.latency_sigma)
    parser.add_argument("--fault-rate", type=float, default=d.fault_rate, help="random 5xx")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--old-markets", type=int, default=d.old_markets, help="sample for the old approach"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run_predictions workers (default C, as in production; the limiter still caps "
        "in-flight requests at C)",
    )
    parser.add_argument(
        "--server-burst",
        type=float,
        default=None,
        help="the fake server's token-bucket capacity (default R; 1 = strictly spaced)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results path")
    args = parser.parse_args(argv)
    if args.rps <= 0 or min(args.in_flight, args.markets, args.old_markets, args.workers or 1) < 1:
        parser.error("--rps must be > 0; --in-flight, --markets, --old-markets, --workers >= 1")
    settings = Settings(
        rps=args.rps,
        in_flight=args.in_flight,
        markets=args.markets,
        latency=args.latency,
        latency_sigma=args.latency_sigma,
        fault_rate=args.fault_rate,
        seed=args.seed,
        old_markets=min(args.old_markets, args.markets),
        workers=args.workers,
        server_burst=args.server_burst,
    )
    return settings, args.output


def main(argv: list[str] | None = None) -> int:
    settings, output = parse_args(argv)
    # Retries are expected here; their warnings would drown the table.
    logging.basicConfig(level=logging.ERROR)
    result = rounded(run(settings))
    print_report(result)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
