"""Child-process bodies for the spend tests (spawned: module-level, light imports at the top)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time


def spend_until_refused(url, model, day_iso, cap, cost, estimate, barrier, results) -> None:
    """Reserve, 'call' (a short sleep), settle `cost`; again until the cap refuses."""
    from prediction_pipeline.store import spend as spend_store
    from prediction_pipeline.store.db import make_engine

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
    from prediction_pipeline.resources import Forecasters
    from prediction_pipeline.services.predict import (
        PredictionTask,
        market_contexts,
        run_predictions,
    )
    from prediction_pipeline.store import models as model_store
    from prediction_pipeline.store import predictions as prediction_store
    from prediction_pipeline.store.db import make_engine

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
