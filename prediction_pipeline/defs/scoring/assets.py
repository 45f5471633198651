"""`forecast_scores` (every prediction on a resolved market, scored with the market price
as the baseline) and `model_leaderboard` (per model, category and horizon)."""

import dagster as dg
import pandas as pd
from pydantic import Field

from prediction_pipeline.core.scoring import (
    calibration_bins,
    calibration_chart,
    leaderboard,
)
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.store import scoring as score_store
from prediction_pipeline.store.db import data_dir

LEADERBOARD_DIMENSIONS = {"overall": None, "category": "category", "horizon": "horizon_bucket"}


class ScoringConfig(dg.Config):
    rescore_all: bool = Field(
        default=False, description="Score every resolved prediction again, not only new ones."
    )


@dg.asset(
    deps=["markets", "predictions"],
    group_name="evaluation",
    kinds={"pandas", "sql"},
    description=(
        "Brier and log score of every prediction on a market resolved YES or NO, and of the "
        "market price it faced. Closed-unresolved and void markets are excluded and counted."
    ),
)
def forecast_scores(
    context: dg.AssetExecutionContext, config: ScoringConfig, app_db: AppDatabase
) -> dg.MaterializeResult:
    with app_db.begin() as conn:
        scored = score_store.score_resolutions(conn, rescore_all=config.rescore_all)
        excluded = score_store.excluded_prediction_counts(conn)
    context.log.info(f"scored {scored.rows} predictions; excluded {excluded}")
    return dg.MaterializeResult(
        metadata={
            "newly_scored": scored.rows,
            "resolved_markets": scored.markets,
            **excluded,
        }
    )


def _board_rows(scored: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for dimension, key in LEADERBOARD_DIMENSIONS.items():
        by = ["model"] if key is None else ["model", key]
        board = leaderboard(scored, by=by)
        board["dimension"] = dimension
        board["bucket"] = "all" if key is None else board[key].fillna("(none)").astype(str)
        parts.append(board.drop(columns=[key] if key else []))
    return pd.concat(parts, ignore_index=True)


@dg.asset(
    deps=[forecast_scores],
    group_name="evaluation",
    kinds={"pandas", "sql"},
    description=(
        "Models against each other and against the market price: n, mean Brier, mean log "
        "score, skill vs market (1 - Brier/Brier_market), expected calibration error; overall, "
        "per category and per horizon. Table `model_leaderboard` and a calibration chart."
    ),
)
def model_leaderboard(
    context: dg.AssetExecutionContext, app_db: AppDatabase
) -> dg.MaterializeResult:
    with app_db.connect() as conn:
        scored = score_store.all_scores(conn)
    if scored.empty:
        with app_db.begin() as conn:
            score_store.replace_leaderboard(conn, pd.DataFrame())
        return dg.MaterializeResult(metadata={"scored_predictions": 0, "leaderboard": "_empty_"})
    rows = _board_rows(scored)
    with app_db.begin() as conn:
        score_store.replace_leaderboard(conn, rows)

    overall = rows[rows["dimension"] == "overall"]
    table = overall[["model", "n", "mean_brier", "mean_log_score", "skill_vs_market", "ece"]].round(
        4
    )
    bins = {
        model: calibration_bins(group["probability"], group["outcome"])
        for model, group in scored.groupby("model")
    }
    priced = scored[scored["market_price"].notna()]
    if not priced.empty:
        bins["market"] = calibration_bins(priced["market_price"], priced["outcome"])
    chart = calibration_chart(bins, data_dir() / "charts" / "calibration.png")
    context.log.info(f"leaderboard over {len(scored)} scored predictions; chart at {chart}")
    best = overall[overall["model"] != "market"].iloc[0]["model"] if len(overall) > 1 else None
    return dg.MaterializeResult(
        metadata={
            "scored_predictions": len(scored),
            "models": int(scored["model"].nunique()),
            "best_model": str(best),
            "leaderboard": dg.MetadataValue.md(table.to_markdown(index=False)),
            "calibration_chart": dg.MetadataValue.path(str(chart)),
        }
    )
