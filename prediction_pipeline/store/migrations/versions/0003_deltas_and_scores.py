"""prediction deltas, forecast scores and the model leaderboard

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def _prediction_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["prediction_id"],
        ["predictions.id"],
        name=f"fk_{table}_prediction_id_predictions",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "prediction_deltas",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("prediction_id", sa.Integer, nullable=False),
        sa.Column("snapshot_day", sa.Date, nullable=False),
        sa.Column("market_price", sa.Float, nullable=False),
        sa.Column("price_then", sa.Float),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("abs_delta", sa.Float, nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("computed_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_deltas"),
        _prediction_fk("prediction_deltas"),
        sa.UniqueConstraint(
            "prediction_id", "snapshot_day", name="uq_prediction_deltas_prediction_id_snapshot_day"
        ),
    )
    op.create_index("ix_prediction_deltas_snapshot_day", "prediction_deltas", ["snapshot_day"])
    op.create_table(
        "forecast_scores",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("prediction_id", sa.Integer, nullable=False),
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("market_id", sa.Integer, nullable=False),
        sa.Column("category", sa.String(128)),
        sa.Column("horizon_days", sa.Float),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("market_price", sa.Float),
        sa.Column("outcome", sa.Float, nullable=False),
        sa.Column("brier", sa.Float, nullable=False),
        sa.Column("log_score", sa.Float, nullable=False),
        sa.Column("market_brier", sa.Float),
        sa.Column("market_log_score", sa.Float),
        sa.Column("scored_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_forecast_scores"),
        _prediction_fk("forecast_scores"),
        sa.UniqueConstraint("prediction_id", name="uq_forecast_scores_prediction_id"),
    )
    op.create_index("ix_forecast_scores_model_slug", "forecast_scores", ["model_slug"])
    op.create_table(
        "model_leaderboard",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("dimension", sa.String(16), nullable=False),
        sa.Column("bucket", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("n_market", sa.Integer, nullable=False),
        sa.Column("mean_brier", sa.Float),
        sa.Column("mean_log_score", sa.Float),
        sa.Column("market_brier", sa.Float),
        sa.Column("market_log_score", sa.Float),
        sa.Column("skill_vs_market", sa.Float),
        sa.Column("ece", sa.Float),
        sa.Column("computed_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_leaderboard"),
        sa.UniqueConstraint(
            "dimension", "bucket", "model", name="uq_model_leaderboard_dimension_bucket_model"
        ),
    )


def downgrade() -> None:
    op.drop_table("model_leaderboard")
    op.drop_table("forecast_scores")
    op.drop_table("prediction_deltas")
