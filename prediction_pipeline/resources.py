"""Dagster resources wrapping the store and the clients, configured from the environment.

Values come through dg.EnvVar when the variable is set, so the UI shows the variable's name
and never its value (database URLs and API keys are secrets); unset variables fall back to
the offline defaults.

Secrets and endpoints come from the environment only. Dagster lets a run's config set any
resource field (`resources.<key>.config.<field>`, EnvVar fields included), and in 1.13 such an
entry *replaces* the resource's definition-time values (fields it does not name fall back to
their class defaults). So a run whose config names one of these resources fails at resource
setup with a clear, non-retried error, before any request: see `EnvironmentOnlyResource`.
Their reprs mask secrets and the secret parts of URLs.

One module (over 400 lines) on purpose: every resource in one place, so that the
environment-only rule (`EnvironmentOnlyResource`) and the offline defaults are checked at a glance.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, ClassVar

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from prediction_pipeline.clients.email import (
    OUTBOX,
    EmailTransport,
    open_transport,
    safe_smtp_url,
)
from prediction_pipeline.clients.gamma import DEFAULT_BASE_URL as DEFAULT_GAMMA_URL
from prediction_pipeline.clients.gamma import GammaClient
from prediction_pipeline.clients.http_retry import RetryPolicy, redact_url
from prediction_pipeline.clients.market_sources import (
    ForecastBenchSource,
    MarketSource,
    PolymarketSource,
    SyntheticSource,
)
from prediction_pipeline.clients.openrouter import DEFAULT_BASE_URL as DEFAULT_OPENROUTER_URL
from prediction_pipeline.clients.openrouter import (
    OpenRouterAuthError,
    OpenRouterClient,
    OpenRouterCreditsError,
    OpenRouterForbiddenError,
)
from prediction_pipeline.clients.rate_limit import ModelLimiter
from prediction_pipeline.clients.webhook import WebhookClient
from prediction_pipeline.core.digests import (
    DEFAULT_MESSAGE_ID_DOMAIN,
    DEFAULT_PUBLIC_URL,
    DEFAULT_SENDER,
    DEV_UNSUBSCRIBE_SECRET,
    DigestRenderer,
)
from prediction_pipeline.services.forecasters import (
    BuiltinForecaster,
    Forecaster,
    OpenRouterForecaster,
)
from prediction_pipeline.store import migrate
from prediction_pipeline.store.db import data_dir, default_database_url, make_engine, safe_url
from prediction_pipeline.store.model_limits import SharedModelBudget
from prediction_pipeline.store.models import BUILTIN_PROVIDER, ModelSpec


class SchemaOutOfDateError(dg.Failure):
    """Not worth retrying: only an operator's `db upgrade` fixes it."""

    def __init__(self, description: str) -> None:
        super().__init__(description, allow_retries=False)


class RunConfigOverrideError(dg.Failure):
    """A run's config tried to configure a resource whose secrets and endpoints come from the
    environment only. Not worth retrying."""

    def __init__(self, description: str) -> None:
        super().__init__(description, allow_retries=False)


def _masked(value: Any) -> str | None:
    return "***" if value else None


def _safe_db_url(url: str) -> str:
    try:
        return safe_url(url)
    except Exception:  # an unparseable URL may hold a password anywhere: show nothing
        return "(unparseable URL)"


class EnvironmentOnlyResource(dg.ConfigurableResource):
    """A resource with fields that only the environment (or the code location's own
    definitions) may set: secrets and endpoints, listed in `ENV_ONLY` (field -> variable).

    A run's config cannot configure it at all (`setup_for_execution` fails the run with the
    field names and their variables): Dagster would otherwise let `resources.<key>.config`
    redirect a key or a message to another host, or silently reset the environment's values
    to the class defaults. Its repr shows `REDACT`ed values only."""

    ENV_ONLY: ClassVar[dict[str, str]] = {}
    REDACT: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is None or not self.ENV_ONLY:
            return  # sensors, schedules and direct use: no run config to check
        configured = (run.run_config or {}).get("resources") or {}
        keys = [k for k, d in context.all_resource_defs.items() if d is context.resource_def]
        if not keys:  # our key not found: fail closed on any entry naming one of our fields
            keys = [k for k, entry in configured.items() if self._names_env_only(entry)]
        for key in keys:
            if key in configured:
                fields = ", ".join(f"{f} ({v})" for f, v in self.ENV_ONLY.items())
                raise RunConfigOverrideError(
                    f"this run's config sets resources.{key}: not allowed. Its secrets and "
                    f"endpoints come from the environment only: {fields}; a run's config "
                    f"cannot override them. Remove `resources.{key}` from the run config."
                )

    def _names_env_only(self, entry: Any) -> bool:
        config = entry.get("config") if isinstance(entry, dict) else None
        return isinstance(config, dict) and bool(set(config) & set(self.ENV_ONLY))

    def __repr_args__(self):
        for name, value in super().__repr_args__():
            redact = self.REDACT.get(name) if name else None
            if redact is None or not value or isinstance(value, dg.EnvVar):
                yield name, value  # an EnvVar shows the variable's name, not its value
            else:
                yield name, redact(value)


@lru_cache(maxsize=32)
def _engine(url: str) -> sa.Engine:
    engine = make_engine(url)
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"the app database {safe_url(url)} is at migration {current or 'none'}, the code "
            f"expects {head}: run `prediction-pipeline db upgrade`"
        )
    return engine


class AppDatabase(EnvironmentOnlyResource):
    """The app database (SQLite file by default, PostgreSQL in production)."""

    ENV_ONLY: ClassVar[dict[str, str]] = {"url": "PREDICTION_PIPELINE_DATABASE_URL"}
    REDACT: ClassVar[dict[str, Callable[[Any], Any]]] = {"url": _safe_db_url}

    url: str = Field(description="SQLAlchemy URL; set PREDICTION_PIPELINE_DATABASE_URL.")

    def engine(self) -> sa.Engine:
        return _engine(self.url)

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """One transaction: committed on success, rolled back on error."""
        with self.engine().begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with self.engine().connect() as conn:
            yield conn


class MarketSourceResource(EnvironmentOnlyResource):
    """Where markets come from: `synthetic` (offline default), `polymarket` (Gamma API) or
    `forecastbench` (a backtest on a ForecastBench question set and its resolutions)."""

    ENV_ONLY: ClassVar[dict[str, str]] = {
        "gamma_url": "POLYMARKET_GAMMA_URL",
        "forecastbench_questions": "PREDICTION_PIPELINE_FORECASTBENCH_QUESTIONS",
        "forecastbench_resolutions": "PREDICTION_PIPELINE_FORECASTBENCH_RESOLUTIONS",
    }

    kind: str = Field(default="synthetic", description="synthetic, polymarket or forecastbench")
    synthetic_size: int = Field(default=300, description="Markets open on any synthetic day.")
    synthetic_seed: int = 7
    gamma_url: str = DEFAULT_GAMMA_URL
    max_markets: int = Field(default=1000, description="Top active Gamma markets by volume.")
    forecastbench_questions: str | None = Field(
        default=None, description="ForecastBench question set: a path or URL (forecastbench)."
    )
    forecastbench_resolutions: str | None = Field(
        default=None, description="Its resolution set: a path or URL (forecastbench)."
    )

    def open(self) -> MarketSource:
        """The configured source. A configuration mistake (unknown kind, a ForecastBench set
        missing or malformed) is not transient: it fails at once, without retries."""
        try:
            return self._open()
        except ValueError as exc:
            raise MarketSourceConfigError(str(exc)) from None

    def _open(self) -> MarketSource:
        if self.kind == "synthetic":
            return SyntheticSource(size=self.synthetic_size, seed=self.synthetic_seed)
        if self.kind == "polymarket":
            return PolymarketSource(GammaClient(base_url=self.gamma_url), self.max_markets)
        if self.kind == "forecastbench":
            if not self.forecastbench_questions:
                raise ValueError(
                    "the forecastbench market source needs a question set: set "
                    "PREDICTION_PIPELINE_FORECASTBENCH_QUESTIONS (and "
                    "PREDICTION_PIPELINE_FORECASTBENCH_RESOLUTIONS) to a path or URL"
                )
            return ForecastBenchSource(self.forecastbench_questions, self.forecastbench_resolutions)
        raise ValueError(
            f"unknown market source {self.kind!r}: set PREDICTION_PIPELINE_MARKET_SOURCE to "
            "'synthetic', 'polymarket' or 'forecastbench'"
        )


class MarketSourceConfigError(dg.Failure, ValueError):
    """The market source is misconfigured: only the operator can fix it, so no retries."""

    def __init__(self, description: str) -> None:
        super().__init__(description, allow_retries=False)


class MissingApiKeyError(dg.Failure):
    pass


class Forecasters(EnvironmentOnlyResource):
    """Builds the forecaster of a registered model: a built-in baseline, or an OpenRouter
    model with its own rate limiter and in-flight cap from the registry."""

    ENV_ONLY: ClassVar[dict[str, str]] = {
        "openrouter_api_key": "OPENROUTER_API_KEY",
        "openrouter_base_url": "OPENROUTER_BASE_URL",
    }
    REDACT: ClassVar[dict[str, Callable[[Any], Any]]] = {"openrouter_api_key": _masked}

    openrouter_api_key: str | None = Field(
        default=None, description="Set OPENROUTER_API_KEY; needed by non-built-in models only."
    )
    openrouter_base_url: str = DEFAULT_OPENROUTER_URL
    timeout_seconds: float = Field(default=90.0, gt=0)
    max_http_attempts: int = Field(default=6, ge=1, description="Per call, the first included.")
    retry_initial_wait_seconds: float = Field(default=1.0, ge=0, description="Backoff base.")
    retry_max_wait_seconds: float = Field(default=60.0, ge=0, description="Cap on one wait.")
    max_answer_attempts: int = Field(default=2, ge=1, description="Re-asks on invalid answers.")

    def build(
        self,
        spec: ModelSpec,
        *,
        show_market_price: bool = False,
        limits_engine: sa.Engine | None = None,
        background: bool = False,
    ) -> Forecaster:
        """`limits_engine` (the app database): the model's limits are shared with every other
        run and process calling it (store.model_limits); without it they hold in-process.
        `background` (the daily batch): its calls let on-demand calls of the model go first."""
        if spec.provider == BUILTIN_PROVIDER:
            return BuiltinForecaster(spec.slug)
        if not self.openrouter_api_key:
            raise MissingApiKeyError(
                f"model {spec.slug} runs on OpenRouter and OPENROUTER_API_KEY is not set",
                allow_retries=False,
            )
        shared = None
        if limits_engine is not None:
            shared = SharedModelBudget(
                limits_engine,
                spec.slug,
                spec.requests_per_second,
                spec.max_in_flight,
                background=background,
            )
        limiter = ModelLimiter(
            spec.requests_per_second, spec.max_in_flight, name=spec.slug, shared=shared
        )
        client = OpenRouterClient(
            self.openrouter_api_key,
            base_url=self.openrouter_base_url,
            timeout=self.timeout_seconds,
            retry_policy=RetryPolicy(
                max_attempts=self.max_http_attempts,
                initial_wait=self.retry_initial_wait_seconds,
                max_wait=self.retry_max_wait_seconds,
                max_retry_after=self.retry_max_wait_seconds,
            ),
            limiter=limiter,
        )
        return OpenRouterForecaster(
            client,
            spec.slug,
            show_market_price=show_market_price,
            max_attempts=self.max_answer_attempts,
        )

    @staticmethod
    def fatal_errors() -> tuple[type[BaseException], ...]:
        """Errors that every other market would hit too: stop the batch at once."""
        return (OpenRouterAuthError, OpenRouterCreditsError, OpenRouterForbiddenError)


class EmailTransportResource(EnvironmentOnlyResource):
    """Where digests go: an outbox folder of .eml files (offline default) or SMTP."""

    ENV_ONLY: ClassVar[dict[str, str]] = {"smtp_url": "PREDICTION_PIPELINE_SMTP_URL"}
    REDACT: ClassVar[dict[str, Callable[[Any], Any]]] = {"smtp_url": safe_smtp_url}

    kind: str | None = Field(
        default=None,
        description="outbox or smtp (PREDICTION_PIPELINE_EMAIL_TRANSPORT); unset: smtp when "
        "an SMTP URL is set, else outbox.",
    )
    smtp_url: str | None = Field(
        default=None,
        description="PREDICTION_PIPELINE_SMTP_URL, e.g. smtp://user:pass@host:587?starttls=true "
        "or smtps://user:pass@host:465 (a secret: pass it as an EnvVar).",
    )
    outbox_dir: str | None = Field(
        default=None, description="Outbox folder; default $PREDICTION_PIPELINE_DATA_DIR/outbox."
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="SMTP socket timeout.")

    def open(self) -> EmailTransport:
        outbox = self.outbox_dir or str(data_dir() / "outbox")
        return open_transport(
            self.kind, smtp_url=self.smtp_url, outbox_dir=outbox, timeout=self.timeout_seconds
        )

    def describe(self) -> str:
        """Where messages go, with any password masked."""
        try:
            return self.open().describe()
        except ValueError:
            return safe_smtp_url(self.smtp_url) if self.smtp_url else "misconfigured"


class DigestSettings(EnvironmentOnlyResource):
    """How digests are signed, addressed and linked."""

    ENV_ONLY: ClassVar[dict[str, str]] = {
        "unsubscribe_secret": "PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET",
        "public_url": "PREDICTION_PIPELINE_PUBLIC_URL",
        "sender": "PREDICTION_PIPELINE_EMAIL_FROM",
    }
    REDACT: ClassVar[dict[str, Callable[[Any], Any]]] = {"unsubscribe_secret": _masked}

    unsubscribe_secret: str | None = Field(
        default=None,
        description="PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET: HMAC key of the unsubscribe links "
        "(shared with the web app that verifies them). Unset: an insecure dev secret.",
    )
    public_url: str = Field(
        default=DEFAULT_PUBLIC_URL,
        description="PREDICTION_PIPELINE_PUBLIC_URL: base of the links in the digest.",
    )
    sender: str = Field(
        default=DEFAULT_SENDER, description="PREDICTION_PIPELINE_EMAIL_FROM: the From header."
    )
    message_id_domain: str = Field(
        default=DEFAULT_MESSAGE_ID_DOMAIN, description="Right-hand side of the Message-IDs."
    )

    @property
    def uses_dev_secret(self) -> bool:
        return not self.unsubscribe_secret or self.unsubscribe_secret == DEV_UNSUBSCRIBE_SECRET

    def renderer(self, transport_kind: str = OUTBOX) -> DigestRenderer:
        """The renderer for messages that go out through `transport_kind`. Raises ValueError
        when they would reach real recipients (anything but the outbox folder) with links
        signed by the built-in development secret: anyone can forge those."""
        if self.uses_dev_secret and transport_kind != OUTBOX:
            raise ValueError(
                f"refusing to send through {transport_kind} with the built-in development "
                "unsubscribe secret (anyone could forge unsubscribe links with it): set "
                "PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET to a long random value shared with the "
                "web app"
            )
        return DigestRenderer(
            secret=self.unsubscribe_secret or DEV_UNSUBSCRIBE_SECRET,
            public_url=self.public_url,
            sender=self.sender,
            message_id_domain=self.message_id_domain,
        )


class AlertSettings(EnvironmentOnlyResource):
    """Where run-failure alerts go besides the log and the `run_failure_alerts` table."""

    ENV_ONLY: ClassVar[dict[str, str]] = {
        "webhook_url": "PREDICTION_PIPELINE_ALERT_WEBHOOK_URL",
        "dagster_url": "PREDICTION_PIPELINE_DAGSTER_URL",
    }
    REDACT: ClassVar[dict[str, Callable[[Any], Any]]] = {"webhook_url": redact_url}

    webhook_url: str | None = Field(
        default=None,
        description="PREDICTION_PIPELINE_ALERT_WEBHOOK_URL: JSON POST per failed run (Slack-"
        "style {'text': ...} plus details). A secret: pass it as an EnvVar.",
    )
    dagster_url: str = Field(
        default="http://127.0.0.1:3000",
        description="PREDICTION_PIPELINE_DAGSTER_URL: base of the run links in alerts.",
    )

    def webhook(self) -> WebhookClient | None:
        """The alert webhook's client, or None when no webhook is configured."""
        return WebhookClient(self.webhook_url) if self.webhook_url else None

    def run_url(self, run_id: str) -> str:
        return f"{self.dagster_url.rstrip('/')}/runs/{run_id}"


def env_or(name: str, default: str | None) -> str | dg.EnvVar | None:
    """dg.EnvVar(name) when the variable is set, else the offline default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "app_db": AppDatabase(
            url=env_or("PREDICTION_PIPELINE_DATABASE_URL", default_database_url())
        ),
        "market_source": MarketSourceResource(
            kind=env_or("PREDICTION_PIPELINE_MARKET_SOURCE", "synthetic"),
            gamma_url=env_or("POLYMARKET_GAMMA_URL", DEFAULT_GAMMA_URL),
            forecastbench_questions=env_or("PREDICTION_PIPELINE_FORECASTBENCH_QUESTIONS", None),
            forecastbench_resolutions=env_or("PREDICTION_PIPELINE_FORECASTBENCH_RESOLUTIONS", None),
        ),
        "forecasters": Forecasters(
            openrouter_api_key=env_or("OPENROUTER_API_KEY", None),
            openrouter_base_url=env_or("OPENROUTER_BASE_URL", DEFAULT_OPENROUTER_URL),
        ),
        "email_transport": EmailTransportResource(
            kind=env_or("PREDICTION_PIPELINE_EMAIL_TRANSPORT", None),
            smtp_url=env_or("PREDICTION_PIPELINE_SMTP_URL", None),
        ),
        "digest_settings": DigestSettings(
            unsubscribe_secret=env_or("PREDICTION_PIPELINE_UNSUBSCRIBE_SECRET", None),
            public_url=env_or("PREDICTION_PIPELINE_PUBLIC_URL", DEFAULT_PUBLIC_URL),
            sender=env_or("PREDICTION_PIPELINE_EMAIL_FROM", DEFAULT_SENDER),
        ),
        "alert_settings": AlertSettings(
            webhook_url=env_or("PREDICTION_PIPELINE_ALERT_WEBHOOK_URL", None),
            dagster_url=env_or("PREDICTION_PIPELINE_DAGSTER_URL", "http://127.0.0.1:3000"),
        ),
    }
