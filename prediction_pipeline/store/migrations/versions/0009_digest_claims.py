"""digest delivery claims on the database clock

Each `pending` claim carries its own expiry, set by the delivery holding it from the
database's clock (`lease_expires_at`), so that a delivery whose clock runs ahead, or that is
configured with a shorter lease, cannot take over a live claim of another one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("digest_deliveries", sa.Column("lease_expires_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("digest_deliveries") as batch:
        batch.drop_column("lease_expires_at")
