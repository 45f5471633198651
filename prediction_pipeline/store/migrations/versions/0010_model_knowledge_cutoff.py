"""models get an optional knowledge cutoff; the leaderboard gets intervals

`models.knowledge_cutoff`: questions resolved before it are left out of the model's scores.
`model_leaderboard` is derived data (rebuilt whole by every materialization of the asset),
so it is dropped and recreated with its new columns rather than altered: the pooled
`market` rows and `n_market` go, intervals, `n_markets`, `too_small` and `beats_market` come.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def _leaderboard(*metrics: sa.Column) -> None:
    op.create_table(
        "model_leaderboard",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("dimension", sa.String(16), nullable=False),
        sa.Column("bucket", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        *metrics,
        sa.Column("computed_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_leaderboard"),
        sa.UniqueConstraint(
            "dimension", "bucket", "model", name="uq_model_leaderboard_dimension_bucket_model"
        ),
    )


def upgrade() -> None:
    op.add_column("models", sa.Column("knowledge_cutoff", sa.Date))
    op.drop_table("model_leaderboard")
    _leaderboard(
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("n_markets", sa.Integer, nullable=False),
        sa.Column("n_priced", sa.Integer, nullable=False),
        sa.Column("mean_brier", sa.Float),
        sa.Column("brier_lo", sa.Float),
        sa.Column("brier_hi", sa.Float),
        sa.Column("mean_log_score", sa.Float),
        sa.Column("log_score_lo", sa.Float),
        sa.Column("log_score_hi", sa.Float),
        sa.Column("market_brier", sa.Float),
        sa.Column("market_log_score", sa.Float),
        sa.Column("skill_vs_market", sa.Float),
        sa.Column("skill_lo", sa.Float),
        sa.Column("skill_hi", sa.Float),
        sa.Column("too_small", sa.Boolean, nullable=False),
        sa.Column("beats_market", sa.Boolean, nullable=False),
        sa.Column("ece", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("model_leaderboard")
    _leaderboard(
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("n_market", sa.Integer, nullable=False),
        sa.Column("mean_brier", sa.Float),
        sa.Column("mean_log_score", sa.Float),
        sa.Column("market_brier", sa.Float),
        sa.Column("market_log_score", sa.Float),
        sa.Column("skill_vs_market", sa.Float),
        sa.Column("ece", sa.Float),
    )
    with op.batch_alter_table("models") as batch:
        batch.drop_column("knowledge_cutoff")
