"""The app database schema (SQLAlchemy Core). Alembic migrations own the real schema;
prediction_pipeline_tests/test_migrations.py proves the migrations produce exactly this."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UTCDateTime = sa.DateTime(timezone=True)

markets = sa.Table(
    "markets",
    metadata,
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
    # The newest partition day that wrote this row: an older day re-materialized later
    # must not roll the market back to an older state.
    sa.Column("observed_day", sa.Date, nullable=False),
    sa.Column("first_seen_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("source", "source_id"),
    sa.Index("ix_markets_status_end_date", "status", "end_date"),
)

market_snapshots = sa.Table(
    "market_snapshots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "market_id", sa.Integer, sa.ForeignKey("markets.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("observed_at", UTCDateTime, nullable=False),
    sa.Column("yes_price", sa.Float),
    sa.Column("volume", sa.Float, nullable=False, server_default="0"),
    sa.Column("liquidity", sa.Float, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.UniqueConstraint("market_id", "day"),
    sa.Index("ix_market_snapshots_day", "day"),
)
