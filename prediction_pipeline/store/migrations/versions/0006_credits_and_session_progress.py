"""credit ledger enforced append-only, session progress as rows, session idempotency keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

- `session_models`: one row per (session, model) replaces the JSON `progress` column of
  `prediction_sessions` (parallel model steps no longer rewrite one shared blob);
- idempotency keys on sessions and requests (UNIQUE per user), credits on requests;
- `credit_ledger`: no cascade from `users`, `request_id` and `debit_id` columns, a sign
  check, and triggers that refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL).

On SQLite the altered tables are rebuilt (batch mode); no other table references them, so
the rebuild cascades nothing. The triggers are created after the rebuild.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)
APPEND_ONLY = "credit_ledger is append-only"
DELTA_SIGN = "(reason = 'debit' AND delta < 0) OR (reason IN ('grant', 'refund') AND delta > 0)"

_sessions = sa.table(
    "prediction_sessions",
    sa.column("id", sa.String),
    sa.column("models", sa.JSON),
    sa.column("progress", sa.JSON),
    sa.column("credits_charged", sa.Integer),
    sa.column("updated_at", UTCDateTime),
)
_session_models = sa.table(
    "session_models",
    sa.column("session_id", sa.String),
    sa.column("model_slug", sa.String),
    sa.column("position", sa.Integer),
    sa.column("status", sa.String),
    sa.column("prediction_id", sa.Integer),
    sa.column("probability", sa.Float),
    sa.column("error", sa.Text),
    sa.column("credits_charged", sa.Integer),
    sa.column("updated_at", UTCDateTime),
)


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _create_ledger_triggers() -> None:
    if _is_sqlite():
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER credit_ledger_no_{action.lower()} BEFORE {action} "
                f"ON credit_ledger BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
        return
    op.execute(
        "CREATE FUNCTION credit_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
    )
    op.execute(
        "CREATE TRIGGER credit_ledger_no_change BEFORE UPDATE OR DELETE ON credit_ledger "
        "FOR EACH ROW EXECUTE FUNCTION credit_ledger_append_only()"
    )
    op.execute(
        "CREATE TRIGGER credit_ledger_no_truncate BEFORE TRUNCATE ON credit_ledger "
        "FOR EACH STATEMENT EXECUTE FUNCTION credit_ledger_append_only()"
    )


def _drop_ledger_triggers() -> None:
    if _is_sqlite():
        op.execute("DROP TRIGGER IF EXISTS credit_ledger_no_update")
        op.execute("DROP TRIGGER IF EXISTS credit_ledger_no_delete")
        return
    op.execute("DROP TRIGGER IF EXISTS credit_ledger_no_change ON credit_ledger")
    op.execute("DROP TRIGGER IF EXISTS credit_ledger_no_truncate ON credit_ledger")
    op.execute("DROP FUNCTION IF EXISTS credit_ledger_append_only()")


def _progress_to_rows(conn: sa.Connection) -> None:
    """Old sessions were charged the same for every model: split what each was charged."""
    for session in conn.execute(sa.select(_sessions)).all():
        models = session.models if isinstance(session.models, list) else json.loads(session.models)
        progress = session.progress
        if isinstance(progress, str):
            progress = json.loads(progress)
        each = session.credits_charged // max(len(models), 1)
        for position, slug in enumerate(models):
            entry = (progress or {}).get(slug, {})
            conn.execute(
                sa.insert(_session_models).values(
                    session_id=session.id,
                    model_slug=slug,
                    position=position,
                    status=entry.get("status", "queued"),
                    prediction_id=entry.get("prediction_id"),
                    probability=entry.get("probability"),
                    error=entry.get("error"),
                    credits_charged=each,
                    updated_at=session.updated_at,
                )
            )


def _rows_to_progress(conn: sa.Connection) -> None:
    rows = conn.execute(sa.select(_session_models)).all()
    progress: dict[str, dict] = {}
    for row in rows:
        entry = {"status": row.status}
        for key in ("prediction_id", "probability", "error"):
            if getattr(row, key) is not None:
                entry[key] = getattr(row, key)
        progress.setdefault(row.session_id, {})[row.model_slug] = entry
    for session_id, entries in progress.items():
        conn.execute(
            sa.update(_sessions).where(_sessions.c.id == session_id).values(progress=entries)
        )


def upgrade() -> None:
    # Rebuild prediction_sessions (SQLite) while nothing references it yet.
    with op.batch_alter_table("prediction_sessions") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(200)))
        batch.create_unique_constraint(
            "uq_prediction_sessions_user_id_idempotency_key", ["user_id", "idempotency_key"]
        )
    op.create_table(
        "session_models",
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("model_slug", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prediction_id", sa.Integer),
        sa.Column("probability", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("credits_charged", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "model_slug", name="pk_session_models"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["prediction_sessions.id"],
            name="fk_session_models_session_id_prediction_sessions",
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name="fk_session_models_prediction_id_predictions",
            ondelete="SET NULL",
        ),
    )
    _progress_to_rows(op.get_bind())
    # A native DROP COLUMN (SQLite >= 3.35): a batch rebuild would drop and re-create the
    # table that session_models now references.
    op.drop_column("prediction_sessions", "progress")
    with op.batch_alter_table("prediction_requests") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(200)))
        batch.add_column(
            sa.Column("credits_charged", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("credits_refunded", sa.Integer, nullable=False, server_default="0")
        )
        batch.create_unique_constraint(
            "uq_prediction_requests_user_id_idempotency_key", ["user_id", "idempotency_key"]
        )
    with op.batch_alter_table("credit_ledger") as batch:
        batch.drop_constraint("fk_credit_ledger_user_id_users", type_="foreignkey")
        batch.create_foreign_key("fk_credit_ledger_user_id_users", "users", ["user_id"], ["id"])
        batch.add_column(sa.Column("request_id", sa.String(36)))
        batch.add_column(sa.Column("debit_id", sa.Integer))
        batch.create_check_constraint("ck_credit_ledger_delta_sign", DELTA_SIGN)
        batch.create_unique_constraint(
            "uq_credit_ledger_request_id_reason", ["request_id", "reason"]
        )
    _create_ledger_triggers()


def downgrade() -> None:
    _drop_ledger_triggers()
    with op.batch_alter_table("credit_ledger") as batch:
        batch.drop_constraint("uq_credit_ledger_request_id_reason", type_="unique")
        batch.drop_constraint("ck_credit_ledger_delta_sign", type_="check")
        batch.drop_column("debit_id")
        batch.drop_column("request_id")
        batch.drop_constraint("fk_credit_ledger_user_id_users", type_="foreignkey")
        batch.create_foreign_key(
            "fk_credit_ledger_user_id_users", "users", ["user_id"], ["id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("prediction_requests") as batch:
        batch.drop_constraint("uq_prediction_requests_user_id_idempotency_key", type_="unique")
        batch.drop_column("credits_refunded")
        batch.drop_column("credits_charged")
        batch.drop_column("idempotency_key")
    op.add_column(
        "prediction_sessions", sa.Column("progress", sa.JSON, nullable=False, server_default="{}")
    )
    _rows_to_progress(op.get_bind())
    op.drop_table("session_models")
    with op.batch_alter_table("prediction_sessions") as batch:
        batch.drop_constraint("uq_prediction_sessions_user_id_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")
