"""The `markets` asset: one day's markets and price snapshots in the app database."""

import datetime as dt

import dagster as dg
import pandas as pd

from prediction_pipeline.core.markets import Market, MarketBatch
from prediction_pipeline.defs.markets.checks import CHECK_SPECS, evaluate_checks
from prediction_pipeline.partitions import daily_partitions
from prediction_pipeline.resources import AppDatabase, MarketSourceResource
from prediction_pipeline.store import markets as market_store

RETRY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def _preview(batch: list[Market], rows: int = 10) -> str:
    if not batch:
        return "_no markets_"
    top = sorted(batch, key=lambda m: m.volume, reverse=True)[:rows]
    frame = pd.DataFrame(
        {
            "source_id": [m.source_id for m in top],
            "question": [m.question[:80] for m in top],
            "category": [m.category or "" for m in top],
            "yes_price": [m.yes_price for m in top],
            "volume": [round(m.volume) for m in top],
            "status": [m.status.value for m in top],
        }
    )
    return frame.to_markdown(index=False)


@dg.asset(
    partitions_def=daily_partitions,
    group_name="markets",
    kinds={"python", "sql"},
    retry_policy=RETRY,
    check_specs=CHECK_SPECS,
    description=(
        "Markets open on the partition day plus every unresolved market we already hold, "
        "upserted into `markets`, with one `market_snapshots` row per market for the day."
    ),
)
def markets(
    context: dg.AssetExecutionContext, app_db: AppDatabase, market_source: MarketSourceResource
) -> dg.MaterializeResult:
    day = dt.date.fromisoformat(context.partition_key)
    source = market_source.open()
    active = source.fetch_active(day)
    for skipped in active.skipped:
        context.log.warning(f"skipped market {skipped.source_id}: {skipped.reason}")

    # Markets that left the active list still need their closing and resolution recorded.
    active_ids = [m.source_id for m in active.markets]
    with app_db.connect() as conn:
        to_refresh = market_store.unsettled_source_ids(conn, source.name, active_ids)
    refreshed = source.lookup(to_refresh, day) if to_refresh else MarketBatch()
    for skipped in refreshed.skipped:
        context.log.warning(f"skipped market {skipped.source_id}: {skipped.reason}")

    batch = active.markets + refreshed.markets
    with app_db.begin() as conn:
        counts = market_store.ingest_markets(conn, batch, day)
    for skipped in counts.rejected:
        context.log.warning(f"skipped market {skipped.source_id}: {skipped.reason}")
    with app_db.connect() as conn:
        check_results = evaluate_checks(conn, day)
    skipped_total = len(active.skipped) + len(refreshed.skipped) + len(counts.rejected)
    stored = len(batch) - len(counts.rejected)
    context.log.info(
        f"{day}: {stored} markets ({counts.new} new, {counts.updated} updated, "
        f"{counts.closed} closed, {counts.resolved} resolved), {skipped_total} skipped"
    )
    return dg.MaterializeResult(
        check_results=check_results,
        metadata={
            "source": source.name,
            "markets": stored,
            "new": counts.new,
            "updated": counts.updated,
            "unchanged": counts.unchanged,
            "closed": counts.closed,
            "resolved": counts.resolved,
            "skipped": skipped_total,
            "truncated": counts.truncated,  # stored with a value cut to fit its column
            "looked_up": len(to_refresh),
            "stale_not_overwritten": counts.stale,
            "snapshots": counts.snapshots,
            "preview": dg.MetadataValue.md(_preview(batch)),
        },
    )
