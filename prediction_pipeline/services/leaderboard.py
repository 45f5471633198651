"""The model leaderboard: SQL aggregates per (model, market[, bucket]) in, honest
comparisons out (intervals from a cluster bootstrap over markets), replaced whole."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from prediction_pipeline.core.leaderboard import calibration_from_sums, leaderboard_from_parts
from prediction_pipeline.core.scoring import DEFAULT_BINS
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import scoring as score_store

#: Seed of the bootstrap: the same scores always give the same intervals.
BOOTSTRAP_SEED = 20261202


@dataclass
class Leaderboard:
    rows: pd.DataFrame  # every dimension, in model_leaderboard's columns
    calibration: dict[str, pd.DataFrame] = field(default_factory=dict)  # per model
    excluded_known_answers: dict[str, int] = field(default_factory=dict)

    def dimension(self, name: str) -> pd.DataFrame:
        if self.rows.empty:
            return self.rows
        return self.rows[self.rows["dimension"] == name].reset_index(drop=True)


def build_leaderboard(conn: sa.Connection, bins: int = DEFAULT_BINS) -> Leaderboard:
    """Read the aggregates, compute every dimension. Memory grows with the markets of one
    (model, bucket) group: the per-market sums are streamed a group at a time."""
    cutoffs = model_store.knowledge_cutoffs(conn)
    parts, calibration = [], {}
    for dimension, key in score_store.LEADERBOARD_KEYS.items():
        by = ["model"] if key is None else ["model", key]
        bins_sums = score_store.leaderboard_calibration_sums(conn, key, cutoffs, bins)
        sums = score_store.leaderboard_market_sum_parts(conn, key, cutoffs)  # streamed
        board = leaderboard_from_parts(sums, by, bins_sums, seed=BOOTSTRAP_SEED)
        board["dimension"] = dimension
        board["bucket"] = "all" if key is None else board[key].fillna("(none)").astype(str)
        parts.append(board.drop(columns=[key] if key else []))
        if key is None:
            calibration = {
                model: calibration_from_sums(table, bins)
                for model, table in bins_sums.groupby("model")
            }
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    excluded = score_store.excluded_known_answers(conn, cutoffs)
    return Leaderboard(rows=rows, calibration=calibration, excluded_known_answers=excluded)


def refresh_leaderboard(engine: sa.Engine, bins: int = DEFAULT_BINS) -> Leaderboard:
    """Build the leaderboard from the scores and replace the `model_leaderboard` table."""
    with engine.connect() as conn:
        board = build_leaderboard(conn, bins)
    with engine.begin() as conn:
        score_store.replace_leaderboard(conn, board.rows)
    return board
