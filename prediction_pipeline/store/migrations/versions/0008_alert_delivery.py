"""run-failure alerts keep an undelivered state for the webhook

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("run_failure_alerts") as batch:
        batch.add_column(sa.Column("delivered_at", UTCDateTime))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_attempt_at", UTCDateTime))
        batch.add_column(sa.Column("last_error", sa.Text))
    # Alerts from before this revision had their one chance: none is re-sent now.
    op.execute("UPDATE run_failure_alerts SET delivered_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("run_failure_alerts") as batch:
        batch.drop_column("last_error")
        batch.drop_column("last_attempt_at")
        batch.drop_column("attempts")
        batch.drop_column("delivered_at")
