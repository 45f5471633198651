"""The model registry as the Dagster wiring reads it: the registered slugs."""

from __future__ import annotations

import sqlalchemy as sa

from prediction_pipeline.store import models as model_store


def model_slugs(conn: sa.Connection, *, enabled_only: bool = False) -> list[str]:
    """The registered slugs, sorted; only the enabled models' with `enabled_only`."""
    return [m.slug for m in model_store.list_models(conn, enabled_only=enabled_only)]
