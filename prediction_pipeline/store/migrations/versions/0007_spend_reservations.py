"""per-model spend reserved before each provider call

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_spend",
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("spent_nusd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_nusd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("model_slug", "day", name="pk_model_spend"),
        sa.ForeignKeyConstraint(
            ["model_slug"], ["models.slug"], name="fk_model_spend_model_slug_models"
        ),
    )
    op.create_table(
        "spend_calls",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("web_search", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("estimate_nusd", sa.BigInteger, nullable=False),
        sa.Column("cost_nusd", sa.BigInteger),
        sa.Column("run_id", sa.String(64)),
        sa.Column("reserved_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("settled_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_spend_calls"),
        sa.ForeignKeyConstraint(
            ["model_slug"], ["models.slug"], name="fk_spend_calls_model_slug_models"
        ),
    )
    op.create_index(
        "ix_spend_calls_model_slug_day_status", "spend_calls", ["model_slug", "day", "status"]
    )
    op.create_index(
        "ix_spend_calls_model_slug_web_search_cost",
        "spend_calls",
        ["model_slug", "web_search", "cost_nusd"],
    )
    # What stored predictions already cost keeps counting against their day's cap.
    op.execute(
        "INSERT INTO model_spend (model_slug, day, spent_nusd, reserved_nusd, calls, updated_at) "
        "SELECT model_slug, day, CAST(ROUND(SUM(cost_usd) * 1000000000) AS BIGINT), 0, "
        "COUNT(*), CURRENT_TIMESTAMP FROM predictions GROUP BY model_slug, day"
    )


def downgrade() -> None:
    op.drop_index("ix_spend_calls_model_slug_web_search_cost", table_name="spend_calls")
    op.drop_index("ix_spend_calls_model_slug_day_status", table_name="spend_calls")
    op.drop_table("spend_calls")
    op.drop_table("model_spend")
