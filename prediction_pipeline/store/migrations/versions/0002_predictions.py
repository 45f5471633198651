"""models registry, predictions and the prediction_failures dead letters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("slug", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("web_search", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("max_in_flight", sa.Integer, nullable=False, server_default="4"),
        sa.Column("requests_per_second", sa.Float, nullable=False, server_default="2"),
        sa.Column("max_cost_usd", sa.Float),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("slug", name="pk_models"),
    )
    # The built-in offline baselines are registered and enabled in every database.
    now = dt.datetime.now(dt.UTC)
    models = sa.table(
        "models",
        sa.column("slug", sa.String),
        sa.column("provider", sa.String),
        sa.column("enabled", sa.Boolean),
        sa.column("web_search", sa.Boolean),
        sa.column("max_in_flight", sa.Integer),
        sa.column("requests_per_second", sa.Float),
        sa.column("created_at", UTCDateTime),
        sa.column("updated_at", UTCDateTime),
    )
    op.bulk_insert(
        models,
        [
            {
                "slug": slug,
                "provider": "builtin",
                "enabled": True,
                "web_search": False,
                "max_in_flight": 8,
                "requests_per_second": 1000.0,
                "created_at": now,
                "updated_at": now,
            }
            for slug in ("baseline/market", "baseline/momentum")
        ],
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("market_id", sa.Integer, nullable=False),
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64)),
        sa.Column("session_id", sa.String(64)),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("confidence", sa.Float),
        sa.Column("rationale", sa.Text, nullable=False, server_default=""),
        sa.Column("market_price", sa.Float),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Float, nullable=False, server_default="0"),
        sa.Column("web_search_used", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("experiment_tag", sa.String(128)),
        sa.Column("experiment_notes", sa.Text),
        sa.Column("run_id", sa.String(64)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
        sa.ForeignKeyConstraint(
            ["market_id"],
            ["markets.id"],
            name="fk_predictions_market_id_markets",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_slug"], ["models.slug"], name="fk_predictions_model_slug_models"
        ),
        sa.CheckConstraint(
            "probability >= 0 AND probability <= 1", name="ck_predictions_probability_range"
        ),
        sa.UniqueConstraint("request_id", name="uq_predictions_request_id"),
        sa.UniqueConstraint(
            "session_id", "model_slug", name="uq_predictions_session_id_model_slug"
        ),
    )
    op.create_index(
        "uq_predictions_batch_market_model_day",
        "predictions",
        ["market_id", "model_slug", "day"],
        unique=True,
        sqlite_where=sa.text("origin = 'batch'"),
        postgresql_where=sa.text("origin = 'batch'"),
    )
    op.create_index("ix_predictions_model_day", "predictions", ["model_slug", "day"])
    op.create_index("ix_predictions_day", "predictions", ["day"])
    op.create_table(
        "prediction_failures",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("market_id", sa.Integer, nullable=False),
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(64), nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failed_at", UTCDateTime, nullable=False),
        sa.Column("last_failed_at", UTCDateTime, nullable=False),
        sa.Column("resolved_at", UTCDateTime),
        sa.Column("run_id", sa.String(64)),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_failures"),
        sa.ForeignKeyConstraint(
            ["market_id"],
            ["markets.id"],
            name="fk_prediction_failures_market_id_markets",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_slug"], ["models.slug"], name="fk_prediction_failures_model_slug_models"
        ),
        sa.UniqueConstraint(
            "market_id",
            "model_slug",
            "day",
            "origin",
            name="uq_prediction_failures_market_id_model_slug_day_origin",
        ),
    )


def downgrade() -> None:
    op.drop_table("prediction_failures")
    op.drop_table("predictions")
    op.drop_table("models")
