"""The app database schema (SQLAlchemy Core). Alembic migrations own the real schema;
prediction_pipeline_tests/test_migrations.py proves the migrations produce exactly this.

The whole schema stays in this one module (over 400 lines) on purpose: every table, index and
constraint in one place, the one thing the migrations are compared with.
"""

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

models = sa.Table(
    "models",
    metadata,
    sa.Column("slug", sa.String(200), primary_key=True),  # e.g. openai/gpt-4o, baseline/market
    sa.Column("provider", sa.String(32), nullable=False),  # builtin | openrouter
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("web_search", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("max_in_flight", sa.Integer, nullable=False, server_default="4"),
    sa.Column("requests_per_second", sa.Float, nullable=False, server_default="2"),
    sa.Column("max_cost_usd", sa.Float),  # spend cap per (model, day); NULL = no cap
    # Questions resolved before this day are left out of the model's scores (it may know them).
    sa.Column("knowledge_cutoff", sa.Date),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "market_id", sa.Integer, sa.ForeignKey("markets.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("model_slug", sa.String(200), sa.ForeignKey("models.slug"), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),  # batch | request | session
    sa.Column("request_id", sa.String(64)),
    sa.Column("session_id", sa.String(64)),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("confidence", sa.Float),
    sa.Column("rationale", sa.Text, nullable=False, server_default=""),
    sa.Column("market_price", sa.Float),  # YES price when the prediction was made
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("latency_ms", sa.Float, nullable=False, server_default="0"),
    sa.Column("web_search_used", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("experiment_tag", sa.String(128)),
    sa.Column("experiment_notes", sa.Text),
    sa.Column("run_id", sa.String(64)),  # the Dagster run that made it
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("probability >= 0 AND probability <= 1", name="probability_range"),
    sa.UniqueConstraint("request_id"),
    sa.UniqueConstraint("session_id", "model_slug"),
    # Batch idempotency: one prediction per (market, model, day).
    sa.Index(
        "uq_predictions_batch_market_model_day",
        "market_id",
        "model_slug",
        "day",
        unique=True,
        sqlite_where=sa.text("origin = 'batch'"),
        postgresql_where=sa.text("origin = 'batch'"),
    ),
    sa.Index("ix_predictions_model_day", "model_slug", "day"),
    sa.Index("ix_predictions_day", "day"),
)

prediction_failures = sa.Table(
    "prediction_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "market_id", sa.Integer, sa.ForeignKey("markets.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("model_slug", sa.String(200), sa.ForeignKey("models.slug"), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # error | budget
    sa.Column("error_type", sa.String(64), nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_failed_at", UTCDateTime, nullable=False),
    sa.Column("last_failed_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime),  # set when a later run stored the prediction
    sa.Column("run_id", sa.String(64)),
    sa.UniqueConstraint("market_id", "model_slug", "day", "origin"),
)

prediction_deltas = sa.Table(
    "prediction_deltas",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "prediction_id",
        sa.Integer,
        sa.ForeignKey("predictions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("snapshot_day", sa.Date, nullable=False),
    sa.Column("market_price", sa.Float, nullable=False),  # YES price on the snapshot day
    sa.Column("price_then", sa.Float),  # YES price when the prediction was made
    sa.Column("delta", sa.Float, nullable=False),  # market_price - probability
    sa.Column("abs_delta", sa.Float, nullable=False),
    sa.Column("direction", sa.String(8), nullable=False),  # toward | away | flat | unknown
    sa.Column("computed_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("prediction_id", "snapshot_day"),
    sa.Index("ix_prediction_deltas_snapshot_day", "snapshot_day"),
)

forecast_scores = sa.Table(
    "forecast_scores",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "prediction_id",
        sa.Integer,
        sa.ForeignKey("predictions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("model_slug", sa.String(200), nullable=False),
    sa.Column("market_id", sa.Integer, nullable=False),
    sa.Column("category", sa.String(128)),
    sa.Column("horizon_days", sa.Float),  # end date minus prediction day
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("market_price", sa.Float),
    sa.Column("outcome", sa.Float, nullable=False),  # 1 = YES, 0 = NO
    sa.Column("brier", sa.Float, nullable=False),
    sa.Column("log_score", sa.Float, nullable=False),
    sa.Column("market_brier", sa.Float),
    sa.Column("market_log_score", sa.Float),
    sa.Column("scored_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("prediction_id"),
    sa.Index("ix_forecast_scores_model_slug", "model_slug"),
)

model_leaderboard = sa.Table(
    "model_leaderboard",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("dimension", sa.String(16), nullable=False),  # overall | category | horizon
    sa.Column("bucket", sa.String(128), nullable=False),  # "all", a category, "8-30d", ...
    sa.Column("model", sa.String(200), nullable=False),  # a model slug
    sa.Column("n", sa.Integer, nullable=False),  # predictions
    sa.Column("n_markets", sa.Integer, nullable=False),  # distinct markets (bootstrap clusters)
    sa.Column("n_priced", sa.Integer, nullable=False),  # predictions with a market price
    sa.Column("mean_brier", sa.Float),
    sa.Column("brier_lo", sa.Float),  # 95% interval, cluster bootstrap over markets
    sa.Column("brier_hi", sa.Float),
    sa.Column("mean_log_score", sa.Float),
    sa.Column("log_score_lo", sa.Float),
    sa.Column("log_score_hi", sa.Float),
    sa.Column("market_brier", sa.Float),  # the price on exactly this model's priced rows
    sa.Column("market_log_score", sa.Float),
    sa.Column("skill_vs_market", sa.Float),
    sa.Column("skill_lo", sa.Float),
    sa.Column("skill_hi", sa.Float),
    sa.Column("too_small", sa.Boolean, nullable=False),  # fewer markets than the minimum
    sa.Column("beats_market", sa.Boolean, nullable=False),  # skill interval above zero
    sa.Column("ece", sa.Float),
    sa.Column("computed_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("dimension", "bucket", "model"),
)

# -- watchlists and daily digests (migration 0004) ------------------------------------------

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False),  # normalised: stripped, lower case
    sa.Column("name", sa.String(200)),
    sa.Column("digest_opt_in", sa.Boolean, nullable=False, server_default=sa.true()),
    # Set by an unsubscribe (one-click link or CLI); an import never clears it.
    sa.Column("unsubscribed_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("email"),
)

watchlist_items = sa.Table(
    "watchlist_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "market_id", sa.Integer, sa.ForeignKey("markets.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("added_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "market_id"),
    sa.Index("ix_watchlist_items_market_id", "market_id"),
)

# The exactly-once ledger of the daily digest: one row per (user, day), claimed as `pending`
# in its own committed transaction before each send, marked `sent` / `failed` after it.
digest_deliveries = sa.Table(
    "digest_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | sent | failed | skipped
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # handed to transport
    sa.Column("skip_reason", sa.String(32)),  # nothing_new | opted_out
    sa.Column("error_kind", sa.String(16)),  # transient | permanent (permanent: not retried)
    sa.Column("last_error", sa.Text),
    sa.Column("message_id", sa.String(255)),  # our stable Message-ID for (user, day)
    sa.Column("provider_message_id", sa.String(255)),  # the SMTP queue id / outbox file
    sa.Column("run_id", sa.String(64)),  # the Dagster run that last claimed the row
    sa.Column("claim_token", sa.String(64)),  # the delivery that holds the claim (fencing)
    sa.Column("claimed_at", UTCDateTime),
    # The claim is live until then, on the database's clock (migration 0009).
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("status IN ('pending', 'sent', 'failed', 'skipped')", name="status_known"),
    sa.UniqueConstraint("user_id", "day"),
    sa.Index("ix_digest_deliveries_day_status", "day", "status"),
)

# -- on-demand requests, sessions, credits and alerts (migration 0005) -----------------------

# Queue tables: the web app inserts rows (status `queued`); the pipeline owns the rest.
prediction_requests = sa.Table(
    "prediction_requests",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # uuid4, returned to the caller at once
    sa.Column(
        "market_id", sa.Integer, sa.ForeignKey("markets.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("model_slug", sa.String(200), sa.ForeignKey("models.slug"), nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("web_search", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("status", sa.String(16), nullable=False),  # queued | running | succeeded | failed
    sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id", ondelete="SET NULL")),
    sa.Column("error", sa.Text),
    sa.Column("run_id", sa.String(64)),
    sa.Column("launches", sa.Integer, nullable=False, server_default="0"),
    # The caller's retry key (migration 0006): a repeat with the same key returns this row.
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("credits_charged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("credits_refunded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "idempotency_key"),
    sa.Index("ix_prediction_requests_status", "status"),
)

prediction_sessions = sa.Table(
    "prediction_sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "market_id", sa.Integer, sa.ForeignKey("markets.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("models", sa.JSON, nullable=False),  # the selected model slugs, in order
    sa.Column("web_search", sa.Boolean, nullable=False, server_default=sa.false()),
    # queued | running | completed | partial | failed
    sa.Column("status", sa.String(16), nullable=False),
    # queued | research | predicting | notifying | done
    sa.Column("current_step", sa.String(16), nullable=False),
    sa.Column("research", sa.Text),
    sa.Column("credits_charged", sa.Integer, nullable=False),
    sa.Column("credits_refunded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("run_id", sa.String(64)),
    sa.Column("launches", sa.Integer, nullable=False, server_default="0"),
    sa.Column("notified_at", UTCDateTime),
    sa.Column("idempotency_key", sa.String(200)),  # see prediction_requests
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "idempotency_key"),
    sa.Index("ix_prediction_sessions_status", "status"),
)

# One row per (session, model): each model step updates its own row, so parallel steps
# cannot overwrite each other's progress (migration 0006 replaced a JSON column).
# No ON DELETE CASCADE: on SQLite a migration that rebuilds prediction_sessions (batch
# mode drops the old table) must fail loudly, not silently empty this table.
session_models = sa.Table(
    "session_models",
    metadata,
    sa.Column(
        "session_id", sa.String(36), sa.ForeignKey("prediction_sessions.id"), primary_key=True
    ),
    sa.Column("model_slug", sa.String(200), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),  # order of the user's selection
    sa.Column("status", sa.String(16), nullable=False),  # queued | running | succeeded | failed
    sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id", ondelete="SET NULL")),
    sa.Column("probability", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("credits_charged", sa.Integer, nullable=False),  # what a refund gives back
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Append-only, enforced (migration 0006): no cascade from `users` (deleting a user with
# credit history is refused) and triggers refuse UPDATE and DELETE on both databases.
# A user's balance is SUM(delta). One debit per session or request, one refund per
# (session, model) or request at most, whatever retries or recoveries happen; a refund
# names its debit (`debit_id`) and gives back what that debit charged.
credit_ledger = sa.Table(
    "credit_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("delta", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),  # grant | debit | refund
    sa.Column("session_id", sa.String(36)),
    sa.Column("model_slug", sa.String(200)),
    sa.Column("request_id", sa.String(36)),
    sa.Column("debit_id", sa.Integer),  # a refund's debit row (same table, never deleted)
    sa.Column("note", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(
        "(reason = 'debit' AND delta < 0) OR (reason IN ('grant', 'refund') AND delta > 0)",
        name="delta_sign",
    ),
    sa.UniqueConstraint("session_id", "model_slug", "reason"),
    sa.UniqueConstraint("request_id", "reason"),
    sa.Index("ix_credit_ledger_user_id", "user_id"),
    # A grant's retry key (migration 0011): the same key for the same user grants once.
    sa.Column("idempotency_key", sa.String(200)),
    sa.Index("ux_credit_ledger_user_id_idempotency_key", "user_id", "idempotency_key", unique=True),
)

# What happened to each request and session, in order (migration 0011): the API's event
# streams read it. Append-only; the id orders events and is the SSE event id.
on_demand_events = sa.Table(
    "on_demand_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # request | session
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_on_demand_events_item_id_id", "item_id", "id"),
)

# Keys of the HTTP API (migration 0011). Only a SHA-256 of each key is stored: keys are 256
# random bits, so a plain hash cannot be reversed and needs no salt; `prefix` lets an
# operator tell keys apart in `api keys list` without revealing them.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
    sa.UniqueConstraint("key_hash"),
)

# The first answer to each POST that carried an Idempotency-Key, per API key: a retry with
# the same key and body gets it again; the same key with another body is refused.
api_idempotency = sa.Table(
    "api_idempotency",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("api_key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(100), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),  # SHA-256 of the body
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("api_key_id", "idempotency_key"),
)

run_failure_alerts = sa.Table(
    "run_failure_alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("job_name", sa.String(200), nullable=False),
    sa.Column("partition_key", sa.String(300)),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("run_url", sa.String(500), nullable=False),
    sa.Column("notified_via", sa.String(64), nullable=False),  # log | webhook | email, joined
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Webhook delivery (migration 0008): NULL until delivered (or nothing to deliver);
    # retried on later sensor ticks, at most MAX_ALERT_ATTEMPTS times.
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_attempt_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.UniqueConstraint("run_id"),
)

# -- spend per (model, day) (migration 0007) --------------------------------------------------

# The counter every provider call reserves against, in nano-USD (integers: exact sums, so a cap
# hit exactly is hit exactly). `reserved_nusd` is held by calls in flight; a call is admitted
# by one conditional UPDATE (store.spend.reserve), atomic on SQLite and PostgreSQL.
model_spend = sa.Table(
    "model_spend",
    metadata,
    sa.Column("model_slug", sa.String(200), sa.ForeignKey("models.slug"), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("spent_nusd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reserved_nusd", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# One row per provider call: what it reserved, what it cost. status: reserved (in flight) |
# settled | released (never sent) | expired (its holder vanished; the hold was given back, a
# late settle still adds the cost).
spend_calls = sa.Table(
    "spend_calls",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("model_slug", sa.String(200), sa.ForeignKey("models.slug"), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),  # forecast | research
    sa.Column("web_search", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("estimate_nusd", sa.BigInteger, nullable=False),
    sa.Column("cost_nusd", sa.BigInteger),
    sa.Column("run_id", sa.String(64)),
    sa.Column("reserved_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("settled_at", UTCDateTime),
    sa.Index("ix_spend_calls_model_slug_day_status", "model_slug", "day", "status"),
    # The estimate of the next call: the dearest call of the model seen so far (MAX by index).
    sa.Index("ix_spend_calls_model_slug_web_search_cost", "model_slug", "web_search", "cost_nusd"),
)

# The per-model call budget shared by every run and process (store/model_limits.py).
# Times are epoch seconds on the database's clock, so hosts with skewed clocks agree.
model_rate_slots = sa.Table(
    "model_rate_slots",
    metadata,
    sa.Column("model_slug", sa.String(200), primary_key=True),
    sa.Column("next_slot", sa.Float, nullable=False),  # earliest send time of the next call
)

model_call_leases = sa.Table(
    "model_call_leases",
    metadata,
    sa.Column("model_slug", sa.String(200), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),  # 0 .. max_in_flight - 1
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # a crashed holder's lease lapses
)
