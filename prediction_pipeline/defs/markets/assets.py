"""The `markets` asset: one day's markets and price snapshots in the app database."""

import datetime as dt

import dagster as dg
import pandas as pd

from prediction_pipeline.core.markets import Market
from prediction_pipeline.defs.markets.checks import CHECK_SPECS, check_results
from prediction_pipeline.partitions import daily_partitions
from prediction_pipeline.resources import AppDatabase, MarketSourceResource
from prediction_pipeline.services import markets as market_service

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
    ingest = market_service.ingest_day(app_db.engine(), market_source.open(), day)
    for skipped in ingest.skipped:
        context.log.warning(f"skipped market {skipped.source_id}: {skipped.reason}")
    counts = ingest.counts
    context.log.info(
        f"{day}: {ingest.stored} markets ({counts.new} new, {counts.updated} updated, "
        f"{counts.closed} closed, {counts.resolved} resolved), {len(ingest.skipped)} skipped"
    )
    return dg.MaterializeResult(
        check_results=check_results(market_service.day_quality(app_db.engine(), day)),
        metadata={
            "source": ingest.source,
            "markets": ingest.stored,
            "new": counts.new,
            "updated": counts.updated,
            "unchanged": counts.unchanged,
            "closed": counts.closed,
            "resolved": counts.resolved,
            "skipped": len(ingest.skipped),
            "truncated": counts.truncated,  # stored with a value cut to fit its column
            "looked_up": ingest.looked_up,
            "stale_not_overwritten": counts.stale,
            "snapshots": counts.snapshots,
            "preview": dg.MetadataValue.md(_preview(ingest.markets)),
        },
    )
