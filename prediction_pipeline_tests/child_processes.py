"""The processes that the concurrency tests start, and their bodies.

`CONTEXT` starts them from a fork server (one per test process) that imported this module, and
with it SQLAlchemy and the package, once: a child costs a fork, not a new interpreter importing
all of that again (1-3 s of CPU each under 'spawn', for about a hundred children in the
suite). Unlike a plain fork of the test process, the server is single-threaded and holds no
database connection or open socket: each child opens its own engine, as a separate web
worker or run worker would. The server is started with the test process's environment, so a
test that changes os.environ must not count on its children seeing the change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import time

import httpx

from prediction_pipeline.clients.webhook import WebhookClient
from prediction_pipeline.resources import Forecasters
from prediction_pipeline.services import alerts as alert_service
from prediction_pipeline.services import on_demand
from prediction_pipeline.services.predict import PredictionTask, market_contexts, run_predictions
from prediction_pipeline.store import credits as credit_store
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import queue_items
from prediction_pipeline.store import sessions as session_store
from prediction_pipeline.store import spend as spend_store
from prediction_pipeline.store.db import make_engine

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload([__name__])


def run_together(target, args_per_process, timeout: float = 240) -> list:
    """One child per args tuple, each given a shared barrier (so they start their work at
    once) and a result queue; waits for all and returns what they put on the queue."""
    barrier = CONTEXT.Barrier(len(args_per_process))
    results = CONTEXT.Queue()
    children = [
        CONTEXT.Process(target=target, args=(*a, barrier, results)) for a in args_per_process
    ]
    for child in children:
        child.start()
    out = [results.get(timeout=timeout) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    return out


def spend_until_refused(url, model, day_iso, cap, cost, estimate, barrier, results) -> None:
    """Reserve, 'call' (a short sleep), settle `cost`; again until the cap refuses."""
    engine = make_engine(url)
    day = dt.date.fromisoformat(day_iso)
    calls = 0
    barrier.wait()
    while True:
        with engine.begin() as conn:
            admission, ticket = spend_store.reserve(
                conn,
                model,
                day,
                cap,
                web_search=False,
                purpose="forecast",
                estimate_usd=estimate,
            )
        if admission is spend_store.Admission.EXHAUSTED:
            break
        if ticket is None:  # calls in flight hold the headroom
            time.sleep(0.003)
            continue
        time.sleep(0.002)  # the provider call
        with engine.begin() as conn:
            spend_store.settle(conn, ticket, cost)
        calls += 1
    engine.dispose()
    results.put(calls)


def predict_slice(job: dict, barrier, results) -> None:
    """One run of `run_predictions` for some markets of one model and day, against the fake
    OpenRouter at `job["base_url"]`; puts the report's numbers on `results`."""
    engine = make_engine(job["url"])
    day = dt.date.fromisoformat(job["day"])
    forecasters = Forecasters(
        openrouter_api_key=job["key"],
        openrouter_base_url=job["base_url"],
        timeout_seconds=5,
        max_http_attempts=3,
        retry_initial_wait_seconds=0.01,
        retry_max_wait_seconds=0.05,
    )
    with engine.connect() as conn:
        spec = model_store.get_model(conn, job["model"])
        by_id = {r.id: r for r in prediction_store.candidate_markets(conn, day)}
        contexts = market_contexts(conn, [by_id[i] for i in job["market_ids"]], day)
    task = PredictionTask(
        model=job["model"],
        day=day,
        contexts=contexts,
        max_in_flight=2,
        max_cost_usd=job["cap"],
        origin=job.get("origin", prediction_store.BATCH),
        request_id=job.get("request_id"),
    )
    forecaster = forecasters.build(spec)
    barrier.wait()
    report = asyncio.run(
        run_predictions(engine, forecaster, task, fatal_errors=forecasters.fatal_errors())
    )
    engine.dispose()
    results.put(
        {
            "cost_usd": report.cost_usd,
            "predicted": report.predicted,
            "failed": report.failed,
            "skipped_budget": report.skipped_budget,
            "skipped_existing": report.skipped_existing,
            "selected": report.selected,
        }
    )


def deliver_alert(url, webhook, alert, barrier, results) -> None:
    """test_alerts: one process racing the others to deliver the same alert."""
    engine = make_engine(url)
    barrier.wait()
    results.put(alert_service.deliver(engine, alert, WebhookClient(webhook), seen_attempts=0))
    engine.dispose()


def post_prediction_with_key(base_url: str, key: str, body: dict, out) -> None:
    """test_api: one client retrying the same POST (one Idempotency-Key) as the others."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "double-click"}
    answer = httpx.post(f"{base_url}/v1/predictions", json=body, headers=headers, timeout=30)
    out.put((answer.status_code, answer.json().get("id")))


def open_item(url, kind, market, models, user, key, barrier, results) -> None:
    """test_credits: wait for the others, then create a session or a request (one web
    request's worth of work)."""
    engine = make_engine(url)
    options = {} if key is None else {"idempotency_key": key}
    barrier.wait()
    try:
        if kind == "session":
            item_id = on_demand.create_session(engine, market, models, user, **options)
        else:
            item_id = on_demand.request_prediction(
                engine, market, models[0], user_email=user, **options
            )
        results.put(("ok", item_id))
    except credit_store.InsufficientCredits as exc:
        results.put(("insufficient", str(exc)))
    except Exception as exc:  # reported to the test, which fails on any
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()


def mark_model_done(url, session_id, model, barrier, results) -> None:
    """test_credits: one model step of a session reporting success."""
    engine = make_engine(url)
    barrier.wait()
    try:
        with engine.begin() as conn:
            session_store.set_model_progress(
                conn, session_id, model, status=queue_items.SUCCEEDED, probability=0.5
            )
        results.put(("ok", model))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()
