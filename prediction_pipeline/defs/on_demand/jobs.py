"""Runs of on-demand work: one run per prediction request, one run per session.

A session runs as steps: research (optional web search) -> one step per selected model
(mapped, in parallel) -> settle (status, refunds) -> notify (email through the digest
transport) -> verdict. Every model step updates the session's progress as soon as it finishes.

Failure is visible: a request whose prediction failed, or a session with a failed model, ends
in a failed run (red in the UI, seen by `run_failure_alerts` and its webhook) after the row has
recorded the error and the refund. The session still settles and notifies first: the failing
step is the last one, `verdict`, so a model's failure never skips the refund or the email.
The ops only wire config and resources to services.on_demand and services.sessions.

Forecasters are built with the app database as `limits_engine`: a request or session shares
its model's rate and in-flight budget with the batch and every other run (store.model_limits).
"""

from functools import partial

import dagster as dg
from pydantic import Field

from prediction_pipeline.defs.run_config import RunConfig
from prediction_pipeline.resources import (
    AppDatabase,
    DigestSettings,
    EmailTransportResource,
    Forecasters,
)
from prediction_pipeline.services import on_demand, sessions

RETRY = dg.RetryPolicy(
    max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class RequestConfig(RunConfig):
    request_id: str = Field(min_length=1)


class SessionConfig(RunConfig):
    session_id: str = Field(min_length=1)


@dg.op(retry_policy=RETRY, pool="openrouter")
def fulfil_request(
    context: dg.OpExecutionContext,
    config: RequestConfig,
    app_db: AppDatabase,
    forecasters: Forecasters,
) -> None:
    """Predict the requested market with the requested model, once; fail the run (without
    retries: the row is final and refunded) when the prediction failed."""
    engine = app_db.engine()
    outcome = on_demand.fulfil_request(
        engine,
        partial(forecasters.build, limits_engine=engine),
        forecasters.fatal_errors(),
        config.request_id,
        context.run_id,
    )
    if outcome.error or outcome.probability is None:
        raise dg.Failure(
            f"request {config.request_id} ({outcome.model}) failed: "
            f"{outcome.error or 'no prediction'}",
            metadata={"request_id": config.request_id, "model": outcome.model},
            allow_retries=False,
        )
    else:
        context.log.info(
            f"request {config.request_id}: {outcome.model} p={outcome.probability:.3f} "
            f"(prediction {outcome.prediction_id})"
        )


@dg.job(
    description="Fulfil one on-demand prediction request (launched by prediction_requests_sensor)."
)
def prediction_request_job():
    fulfil_request()


@dg.op(out=dg.DynamicOut(str), retry_policy=RETRY)
def research(
    context: dg.OpExecutionContext,
    config: SessionConfig,
    app_db: AppDatabase,
    forecasters: Forecasters,
):
    """Start the session, research the question if asked, then fan out one step per model."""
    engine = app_db.engine()
    models, notes = on_demand.research_session(
        engine, partial(forecasters.build, limits_engine=engine), config.session_id, context.run_id
    )
    context.log.info(
        f"session {config.session_id}: {len(models)} models to run"
        + (f"; research notes of {len(notes)} characters" if notes else "")
    )
    for index, model in enumerate(models):
        # Mapping keys allow only letters, digits and underscores.
        key = f"m{index}_" + "".join(c if c.isalnum() else "_" for c in model)
        yield dg.DynamicOutput(model, mapping_key=key)


@dg.op(retry_policy=RETRY, pool="openrouter")
def predict_model(
    context: dg.OpExecutionContext,
    config: SessionConfig,
    model: str,
    app_db: AppDatabase,
    forecasters: Forecasters,
) -> str:
    engine = app_db.engine()
    outcome = on_demand.predict_session_model(
        engine,
        partial(forecasters.build, limits_engine=engine),
        forecasters.fatal_errors(),
        config.session_id,
        model,
        context.run_id,
    )
    if outcome.error:
        # Recorded in the session's progress; `verdict` fails the run once it has settled.
        context.log.warning(f"session {config.session_id}: {model} failed: {outcome.error}")
    return model


@dg.op
def settle(
    context: dg.OpExecutionContext, config: SessionConfig, models: list[str], app_db: AppDatabase
) -> str:
    status = on_demand.settle_session(app_db.engine(), config.session_id)
    context.log.info(f"session {config.session_id}: {status} ({len(models)} model steps)")
    return status


@dg.op(retry_policy=RETRY)
def notify(
    context: dg.OpExecutionContext,
    config: SessionConfig,
    status: str,
    app_db: AppDatabase,
    email_transport: EmailTransportResource,
    digest_settings: DigestSettings,
) -> None:
    """Email the user once (services.sessions.notify_session): a failure releases the claim,
    so the op's retry sends it; an already-notified session is not sent again."""
    notice = sessions.notify_session(
        app_db.engine(),
        config.session_id,
        email_transport.open,
        sender=digest_settings.sender,
        message_id_domain=digest_settings.message_id_domain,
    )
    if notice.sent:
        context.log.info(f"session {config.session_id}: notified {notice.recipient} ({status})")
    else:
        context.log.info(f"session {config.session_id}: already notified")


@dg.op(ins={"status": dg.In(str), "notified": dg.In(dg.Nothing)})
def verdict(
    context: dg.OpExecutionContext, config: SessionConfig, status: str, app_db: AppDatabase
):
    """Fail the run when a model of the session failed (after settle and notify)."""
    outcome = sessions.session_verdict(app_db.engine(), config.session_id, status)
    if not outcome.succeeded:
        raise dg.Failure(
            f"session {config.session_id} ended {status}: {outcome.detail}",
            metadata={
                "session_id": config.session_id,
                "failed_models": sorted(outcome.failed_models),
            },
            allow_retries=False,
        )
    context.log.info(f"session {config.session_id}: every model succeeded")


@dg.job(
    description="Run one multi-model prediction session (launched by prediction_sessions_sensor).",
    executor_def=dg.multiprocess_executor,  # the model steps run side by side
)
def prediction_session_job():
    finished = research().map(predict_model).collect()
    status = settle(finished)
    verdict(status, notify(status))
