"""Scoring of resolved predictions: every prediction on a market resolved YES or NO gets its
Brier and log score, and those of the market price it faced (the baseline to beat)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store import scoring as score_store


@dataclass(frozen=True)
class ScoringOutcome:
    newly_scored: int  # predictions scored by this call (all of them again with rescore_all)
    resolved_markets: int  # distinct markets those predictions belong to
    excluded: dict[str, int]  # predictions left unscored, by reason (unresolved, void)


def score_predictions(engine: sa.Engine, *, rescore_all: bool = False) -> ScoringOutcome:
    """Score what has no score yet (everything with `rescore_all`), in one transaction."""
    with engine.begin() as conn:
        scored = score_store.score_resolutions(conn, rescore_all=rescore_all)
        excluded = score_store.excluded_prediction_counts(conn)
    return ScoringOutcome(scored.rows, scored.markets, excluded)
