"""`make demo`: run the daily pipeline on the offline defaults into $DAGSTER_HOME.

Runs go through the code location's own jobs on the real instance, so they show up in the
UI (Runs, Assets) afterwards. A short history of days is materialized first so the momentum
baseline has a trend to follow.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import dagster as dg

from prediction_pipeline.definitions import defs
from prediction_pipeline.partitions import model_partitions
from prediction_pipeline.store import models as model_store

# Keep the demo's console readable: the UI has the full event log.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    events = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in events[0].metadata.items()} if events else {}


def run_demo(engine, today: dt.date, history_days: int, echo: Callable[[str], None]) -> bool:
    instance = dg.DagsterInstance.get()
    ok = True
    markets_job = defs.resolve_job_def("markets_job")
    echo(f"markets: {history_days} days of history up to {today} ...")
    for offset in range(history_days, -1, -1):
        day = (today - dt.timedelta(days=offset)).isoformat()
        result = markets_job.execute_in_process(
            partition_key=day, instance=instance, run_config=QUIET
        )
        ok &= result.success
    meta = _metadata(result, "markets")
    checks = result.get_asset_check_evaluations()
    echo(
        f"markets {today}: {meta.get('markets')} markets ({meta.get('new')} new, "
        f"{meta.get('resolved')} resolved today), checks {sum(c.passed for c in checks)}/"
        f"{len(checks)} passed"
    )

    with engine.connect() as conn:
        enabled = model_store.list_models(conn, enabled_only=True)
    missing = [
        m.slug for m in enabled if not instance.has_dynamic_partition(model_partitions.name, m.slug)
    ]
    if missing:
        instance.add_dynamic_partitions(model_partitions.name, missing)
    predictions_job = defs.resolve_job_def("predictions_job")
    echo(f"\npredictions {today}:")
    for spec in enabled:
        key = dg.MultiPartitionKey({"day": today.isoformat(), "model": spec.slug})
        result = predictions_job.execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False, run_config=QUIET
        )
        if not result.success:
            ok = False
            failure = result.get_step_failure_events()
            reason = failure[0].event_specific_data.error.message.strip() if failure else "?"
            echo(f"  {spec.slug:<24} FAILED: {reason.splitlines()[0][:160]}")
            continue
        meta = _metadata(result, "predictions")
        echo(
            f"  {spec.slug:<24} predicted={meta['predicted']} already={meta['skipped_existing']} "
            f"failed={meta['failed']} cost=${meta['cost_usd']:.4f} p50={meta['latency_p50_ms']}ms"
        )
    return ok
