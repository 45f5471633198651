"""markets and market snapshots

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "markets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("source_id", sa.String(128), nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("slug", sa.String(512), nullable=False, server_default=""),
        sa.Column("category", sa.String(128)),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("end_date", UTCDateTime),
        sa.Column("volume", sa.Float, nullable=False, server_default="0"),
        sa.Column("liquidity", sa.Float, nullable=False, server_default="0"),
        sa.Column("outcomes", sa.JSON, nullable=False),
        sa.Column("yes_price", sa.Float),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resolved_outcome", sa.String(8)),
        sa.Column("closed_at", UTCDateTime),
        sa.Column("observed_day", sa.Date, nullable=False),
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_markets"),
        sa.UniqueConstraint("source", "source_id", name="uq_markets_source_source_id"),
    )
    op.create_index("ix_markets_status_end_date", "markets", ["status", "end_date"])
    op.create_table(
        "market_snapshots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("market_id", sa.Integer, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("observed_at", UTCDateTime, nullable=False),
        sa.Column("yes_price", sa.Float),
        sa.Column("volume", sa.Float, nullable=False, server_default="0"),
        sa.Column("liquidity", sa.Float, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_market_snapshots"),
        sa.ForeignKeyConstraint(
            ["market_id"],
            ["markets.id"],
            name="fk_market_snapshots_market_id_markets",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("market_id", "day", name="uq_market_snapshots_market_id_day"),
    )
    op.create_index("ix_market_snapshots_day", "market_snapshots", ["day"])


def downgrade() -> None:
    op.drop_table("market_snapshots")
    op.drop_table("markets")
