"""HTTP API keys, the first answers of idempotent POSTs, idempotent credit grants, the
event log of on-demand work

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    # ADD COLUMN and CREATE INDEX need no table rebuild on SQLite, so the ledger's
    # append-only triggers stay in place.
    op.add_column("credit_ledger", sa.Column("idempotency_key", sa.String(200)))
    op.create_index(
        "ux_credit_ledger_user_id_idempotency_key",
        "credit_ledger",
        ["user_id", "idempotency_key"],
        unique=True,
    )
    op.create_table(
        "on_demand_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_on_demand_events_item_id_id", "on_demand_events", ["item_id", "id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "api_idempotency",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("api_key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(100), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint(
            "api_key_id", "idempotency_key", name="uq_api_idempotency_api_key_id_idempotency_key"
        ),
    )


def downgrade() -> None:
    op.drop_table("api_idempotency")
    op.drop_table("api_keys")
    op.drop_index("ix_on_demand_events_item_id_id", table_name="on_demand_events")
    op.drop_table("on_demand_events")
    op.drop_index("ux_credit_ledger_user_id_idempotency_key", table_name="credit_ledger")
    op.drop_column("credit_ledger", "idempotency_key")
