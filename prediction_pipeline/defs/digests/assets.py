"""The `watchlist_digests` asset: one email per user and day, at most (services.digest_delivery)."""

import datetime as dt

import dagster as dg

from prediction_pipeline.core.digests import DigestRenderer
from prediction_pipeline.defs import automation
from prediction_pipeline.defs.digests.checks import CHECK_SPECS, evaluate_checks
from prediction_pipeline.defs.digests.config import DigestsConfig
from prediction_pipeline.partitions import daily_partitions
from prediction_pipeline.resources import (
    AppDatabase,
    DigestSettings,
    EmailTransport,  # the protocol of what EmailTransportResource.open returns
    EmailTransportResource,
)
from prediction_pipeline.services.digest_delivery import claimant_run_ids, deliver_digests
from prediction_pipeline.services.digest_report import DeliveryReport
from prediction_pipeline.services.digest_settings import DeliverySettings, delivery_settings

# For unexpected errors (a database outage...). A retry resumes: users already sent are
# skipped, only the rest are tried again. Incomplete deliveries (transient send failures) are
# retried by the asset itself, as configured (`retries_when_incomplete`).
RETRY = dg.RetryPolicy(
    max_retries=3, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def dead_claimants(
    instance: dg.DagsterInstance, run_ids: list[str], current_run_id: str
) -> set[str]:
    """Runs whose `pending` claims can be taken over at once: finished runs (they crashed
    between claiming and recording), and this run (an earlier attempt of this step)."""
    dead = {current_run_id}
    for run_id in run_ids:
        if run_id == current_run_id:
            continue
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            dead.add(run_id)
    return dead


def _settings(config: DigestsConfig) -> DeliverySettings:
    return delivery_settings(
        chunk_size=config.chunk_size,
        max_messages_per_second=config.max_messages_per_second,
        connections=config.connections,
        max_send_attempts=config.max_send_attempts,
        retry_initial_wait_seconds=config.retry_initial_wait_seconds,
        retry_max_wait_seconds=config.retry_max_wait_seconds,
        min_price_change=config.min_price_change,
        pending_lease_minutes=config.pending_lease_minutes,
        max_consecutive_failures=config.max_consecutive_failures,
    )


def _preview(report: DeliveryReport) -> str:
    if report.preview is None:
        return "_no digest rendered in this run_"
    return f"```\n{report.preview.strip()}\n```"


@dg.asset(
    partitions_def=daily_partitions,
    # The same day's markets, predictions (each (day, model) partition of the day maps onto
    # this day) and deltas; the scores of resolved markets.
    deps=[
        "markets",
        dg.AssetDep(
            "predictions",
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="day"
            ),
        ),
        "prediction_deltas",
        "forecast_scores",
    ],
    automation_condition=automation.DIGESTS,
    group_name="digests",
    kinds={"python", "sql", "email"},
    retry_policy=RETRY,
    check_specs=CHECK_SPECS,
    description=(
        "One daily digest email per user who watches markets and has something new: prices "
        "and their change, each model's latest forecast and its delta, markets that closed "
        "or resolved and how the models scored. Exactly once per (user, day) through the "
        "`digest_deliveries` ledger."
    ),
)
def watchlist_digests(
    context: dg.AssetExecutionContext,
    config: DigestsConfig,
    app_db: AppDatabase,
    email_transport: EmailTransportResource,
    digest_settings: DigestSettings,
) -> dg.MaterializeResult:
    day = dt.date.fromisoformat(context.partition_key)
    settings, transport, renderer = _open(context, config, email_transport, digest_settings)
    engine = app_db.engine()
    dead = dead_claimants(context.instance, claimant_run_ids(engine, day), context.run_id)
    context.log.info(
        f"digests {day}: sending through {transport.describe()} at <= "
        f"{settings.max_messages_per_second:g} msg/s over {settings.connections} connections"
    )
    report = deliver_digests(
        engine,
        transport,
        renderer,
        day,
        settings,
        run_id=context.run_id,
        dead_runs=dead,
        log=context.log.info,
    )
    summary = _log_outcome(context, day, report)
    metadata = {
        "day": str(day),
        "transport": transport.describe(),
        **report.metadata(),
        "preview": dg.MetadataValue.md(_preview(report)),
    }
    _fail_unless_done(context, config, day, report, summary, metadata)
    with engine.connect() as conn:
        check_results = evaluate_checks(conn, day)
    return dg.MaterializeResult(metadata=metadata, check_results=check_results)


def _open(
    context: dg.AssetExecutionContext,
    config: DigestsConfig,
    email_transport: EmailTransportResource,
    digest_settings: DigestSettings,
) -> tuple[DeliverySettings, EmailTransport, DigestRenderer]:
    """The delivery settings, the transport and the renderer; a configuration error fails
    at once, without retries."""
    try:
        settings = _settings(config)
    except ValueError as exc:
        raise dg.Failure(f"digests config invalid: {exc}", allow_retries=False) from None
    try:
        transport = email_transport.open()
    except ValueError as exc:
        raise dg.Failure(f"email transport misconfigured: {exc}", allow_retries=False) from None
    try:
        renderer = digest_settings.renderer(transport.kind)
    except ValueError as exc:
        raise dg.Failure(f"digest settings invalid: {exc}", allow_retries=False) from None
    if digest_settings.uses_dev_secret:
        context.log.warning(
            "PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET is not set: unsubscribe links are signed "
            "with the built-in INSECURE development secret. Set it before mailing real users."
        )
    return settings, transport, renderer


def _log_outcome(context: dg.AssetExecutionContext, day: dt.date, report: DeliveryReport) -> str:
    """Log the failures and the counts; returns the counts in one sentence."""
    for email, error in report.failures:
        context.log.warning(f"digest {day} to {email} failed: {error}")
    if report.lost_claims:
        context.log.warning(
            f"digests {day}: {report.lost_claims} claims were taken over by another delivery "
            "before their outcome was recorded (not counted as sent by this run)"
        )
    summary = (
        f"{report.considered} users: {report.sent} sent, {report.skipped} skipped "
        f"({report.skipped_nothing_new} nothing new, {report.skipped_opted_out} opted out, "
        f"{report.skipped_already_sent} already sent), {report.failed_permanent} rejected for "
        f"good, {report.failed_transient} failed transiently, {report.released} not sent, "
        f"{len(report.held_elsewhere)} held by another delivery"
    )
    context.log.info(f"digests {day}: {summary}")
    return summary


def _fail_unless_done(
    context: dg.AssetExecutionContext,
    config: DigestsConfig,
    day: dt.date,
    report: DeliveryReport,
    summary: str,
    metadata: dict,
) -> None:
    """Fail a stopped delivery; retry an incomplete one as configured."""
    if report.fatal:
        raise dg.Failure(
            f"digests {day}: stopped: {report.fatal}. {summary}",
            metadata=metadata,
            allow_retries=False,
        )
    if report.incomplete:
        # Retried by the step itself (sent users are skipped, the rest are tried again), as
        # often and as late as the run config says; the last attempt fails with the counts.
        # Users held by another delivery count too: if that delivery dies, only a run that
        # looks again sends to them, so the day is not done until they are settled.
        reasons = [
            report.stopped or "",
            "transient failures" if report.failed_transient or report.released else "",
            report.held_summary(),
        ]
        failure = dg.Failure(
            f"digests {day}: incomplete ({'; '.join(r for r in reasons if r)}). {summary}",
            metadata=metadata,
            allow_retries=False,
        )
        if context.retry_number < config.retries_when_incomplete:
            raise dg.RetryRequested(
                max_retries=config.retries_when_incomplete,
                seconds_to_wait=config.retry_delay_seconds,
            ) from failure
        raise failure
