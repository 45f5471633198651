"""per-model rate and in-flight limits shared across runs and processes

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_rate_slots",
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("next_slot", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("model_slug", name="pk_model_rate_slots"),
    )
    op.create_table(
        "model_call_leases",
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("model_slug", "slot", name="pk_model_call_leases"),
    )


def downgrade() -> None:
    op.drop_table("model_call_leases")
    op.drop_table("model_rate_slots")
