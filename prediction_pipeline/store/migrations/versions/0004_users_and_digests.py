"""users, watchlist items and the digest_deliveries ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.id"], name=f"fk_{table}_user_id_users", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("digest_opt_in", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("unsubscribed_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "watchlist_items",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("market_id", sa.Integer, nullable=False),
        sa.Column("added_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_watchlist_items"),
        _user_fk("watchlist_items"),
        sa.ForeignKeyConstraint(
            ["market_id"],
            ["markets.id"],
            name="fk_watchlist_items_market_id_markets",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("user_id", "market_id", name="uq_watchlist_items_user_id_market_id"),
    )
    op.create_index("ix_watchlist_items_market_id", "watchlist_items", ["market_id"])
    op.create_table(
        "digest_deliveries",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skip_reason", sa.String(32)),
        sa.Column("error_kind", sa.String(16)),
        sa.Column("last_error", sa.Text),
        sa.Column("message_id", sa.String(255)),
        sa.Column("provider_message_id", sa.String(255)),
        sa.Column("run_id", sa.String(64)),
        sa.Column("claim_token", sa.String(64)),
        sa.Column("claimed_at", UTCDateTime),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_digest_deliveries"),
        _user_fk("digest_deliveries"),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed', 'skipped')",
            name="ck_digest_deliveries_status_known",
        ),
        sa.UniqueConstraint("user_id", "day", name="uq_digest_deliveries_user_id_day"),
    )
    op.create_index("ix_digest_deliveries_day_status", "digest_deliveries", ["day", "status"])


def downgrade() -> None:
    op.drop_table("digest_deliveries")
    op.drop_table("watchlist_items")
    op.drop_table("users")
