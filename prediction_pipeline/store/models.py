"""The model registry: which models forecast, with what limits and spend caps."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store.db import dialect_insert
from prediction_pipeline.store.tables import models

BUILTIN_PROVIDER = "builtin"
OPENROUTER_PROVIDER = "openrouter"
# Offline forecasters registered and enabled by default: real baselines, no network.
BUILTIN_MODELS = ("baseline/market", "baseline/momentum")


@dataclass(frozen=True)
class ModelSpec:
    slug: str
    provider: str
    enabled: bool = True
    web_search: bool = False
    max_in_flight: int = 4
    requests_per_second: float = 2.0
    max_cost_usd: float | None = None
    # Questions resolved before this day are excluded from the model's scores.
    knowledge_cutoff: dt.date | None = None


def provider_for(slug: str) -> str:
    return BUILTIN_PROVIDER if slug.startswith("baseline/") else OPENROUTER_PROVIDER


def validate_slug(slug: str) -> str:
    slug = slug.strip()
    if not slug or any(c.isspace() for c in slug) or "|" in slug or "," in slug:
        raise ValueError(f"invalid model slug {slug!r}: no spaces, '|' or ','")
    if provider_for(slug) == BUILTIN_PROVIDER and slug not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {slug!r}; built-ins are {BUILTIN_MODELS}")
    return slug


def upsert_model(conn: sa.Connection, spec: ModelSpec) -> None:
    now = dt.datetime.now(dt.UTC)
    row = {
        "slug": validate_slug(spec.slug),
        "provider": spec.provider,
        "enabled": spec.enabled,
        "web_search": spec.web_search,
        "max_in_flight": spec.max_in_flight,
        "requests_per_second": spec.requests_per_second,
        "max_cost_usd": spec.max_cost_usd,
        "knowledge_cutoff": spec.knowledge_cutoff,
        "created_at": now,
        "updated_at": now,
    }
    insert = dialect_insert(conn, models)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["slug"],
            set_={k: insert.excluded[k] for k in row if k not in ("slug", "created_at")},
        ),
        row,
    )


def update_model(conn: sa.Connection, slug: str, **changes) -> bool:
    changes["updated_at"] = dt.datetime.now(dt.UTC)
    result = conn.execute(sa.update(models).where(models.c.slug == slug).values(**changes))
    return result.rowcount == 1


def knowledge_cutoffs(conn: sa.Connection) -> dict[str, dt.date]:
    """Models that have a knowledge cutoff, and that day."""
    query = sa.select(models.c.slug, models.c.knowledge_cutoff).where(
        models.c.knowledge_cutoff.is_not(None)
    )
    return {row.slug: row.knowledge_cutoff for row in conn.execute(query)}


def get_model(conn: sa.Connection, slug: str) -> ModelSpec | None:
    row = conn.execute(sa.select(models).where(models.c.slug == slug)).first()
    return _spec(row) if row else None


def list_models(conn: sa.Connection, enabled_only: bool = False) -> list[ModelSpec]:
    query = sa.select(models).order_by(models.c.slug)
    if enabled_only:
        query = query.where(models.c.enabled.is_(True))
    return [_spec(row) for row in conn.execute(query)]


def _spec(row: sa.Row) -> ModelSpec:
    return ModelSpec(
        slug=row.slug,
        provider=row.provider,
        enabled=row.enabled,
        web_search=row.web_search,
        max_in_flight=row.max_in_flight,
        requests_per_second=row.requests_per_second,
        max_cost_usd=row.max_cost_usd,
        knowledge_cutoff=row.knowledge_cutoff,
    )
