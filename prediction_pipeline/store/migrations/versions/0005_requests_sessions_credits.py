"""on-demand prediction requests, sessions, the credit ledger and run-failure alerts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "prediction_requests",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("market_id", sa.Integer, nullable=False),
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("user_id", sa.Integer),
        sa.Column("web_search", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prediction_id", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("run_id", sa.String(64)),
        sa.Column("launches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_requests"),
        sa.ForeignKeyConstraint(
            ["market_id"],
            ["markets.id"],
            name="fk_prediction_requests_market_id_markets",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_slug"], ["models.slug"], name="fk_prediction_requests_model_slug_models"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_prediction_requests_user_id_users",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name="fk_prediction_requests_prediction_id_predictions",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_prediction_requests_status", "prediction_requests", ["status"])
    op.create_table(
        "prediction_sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("market_id", sa.Integer, nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("web_search", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_step", sa.String(16), nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("research", sa.Text),
        sa.Column("credits_charged", sa.Integer, nullable=False),
        sa.Column("credits_refunded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("run_id", sa.String(64)),
        sa.Column("launches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("notified_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_sessions"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_prediction_sessions_user_id_users",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["market_id"],
            ["markets.id"],
            name="fk_prediction_sessions_market_id_markets",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_prediction_sessions_status", "prediction_sessions", ["status"])
    op.create_table(
        "credit_ledger",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("delta", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("session_id", sa.String(36)),
        sa.Column("model_slug", sa.String(200)),
        sa.Column("note", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credit_ledger"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_credit_ledger_user_id_users", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "session_id",
            "model_slug",
            "reason",
            name="uq_credit_ledger_session_id_model_slug_reason",
        ),
    )
    op.create_index("ix_credit_ledger_user_id", "credit_ledger", ["user_id"])
    op.create_table(
        "run_failure_alerts",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("partition_key", sa.String(300)),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("run_url", sa.String(500), nullable=False),
        sa.Column("notified_via", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_run_failure_alerts"),
        sa.UniqueConstraint("run_id", name="uq_run_failure_alerts_run_id"),
    )


def downgrade() -> None:
    op.drop_table("run_failure_alerts")
    op.drop_table("credit_ledger")
    op.drop_table("prediction_sessions")
    op.drop_table("prediction_requests")
