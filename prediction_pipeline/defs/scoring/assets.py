"""`forecast_scores` (every prediction on a resolved market, scored with the market price
as the baseline) and `model_leaderboard` (per model, category and horizon)."""

import base64

import dagster as dg
import pandas as pd
from pydantic import Field

from prediction_pipeline.core.calibration_chart import calibration_chart
from prediction_pipeline.defs import automation
from prediction_pipeline.defs.run_config import RunConfig
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.services.leaderboard import refresh_leaderboard
from prediction_pipeline.services.scoring import score_predictions


class ScoringConfig(RunConfig):
    rescore_all: bool = Field(
        default=False, description="Score every resolved prediction again, not only new ones."
    )


@dg.asset(
    # Every resolved market and every prediction on it, whatever its day.
    deps=[
        dg.AssetDep("markets", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("predictions", partition_mapping=dg.AllPartitionMapping()),
    ],
    automation_condition=automation.SCORES,
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
    scored = score_predictions(app_db.engine(), rescore_all=config.rescore_all)
    context.log.info(f"scored {scored.newly_scored} predictions; excluded {scored.excluded}")
    return dg.MaterializeResult(
        metadata={
            "newly_scored": scored.newly_scored,
            "resolved_markets": scored.resolved_markets,
            **scored.excluded,
        }
    )


def _interval(value: float, low: float, high: float, digits: int = 3) -> str:
    if pd.isna(value):
        return "-"
    if pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _verdict(row) -> str:
    if row.too_small:
        return "too few markets"
    if row.beats_market:
        return "beats the market"
    if not pd.isna(row.skill_hi) and row.skill_hi < 0:
        return "worse than the market"
    return "no difference shown"


def _table(board: pd.DataFrame, key: str | None = None) -> str:
    """Markdown: one line per (bucket, model) with 95% intervals and a plain verdict."""
    if board.empty:
        return "_no scored predictions_"
    lines = pd.DataFrame(
        {
            **({key: board["bucket"]} if key else {}),
            "model": board["model"],
            "n": board["n"],
            "markets": board["n_markets"],
            "Brier [95% CI]": [
                _interval(r.mean_brier, r.brier_lo, r.brier_hi, digits=4)
                for r in board.itertuples()
            ],
            "market Brier (same rows)": board["market_brier"].round(4),
            "log score [95% CI]": [
                _interval(r.mean_log_score, r.log_score_lo, r.log_score_hi)
                for r in board.itertuples()
            ],
            "skill vs market [95% CI]": [
                _interval(r.skill_vs_market, r.skill_lo, r.skill_hi) for r in board.itertuples()
            ],
            "verdict": [_verdict(r) for r in board.itertuples()],
            "ECE": board["ece"].round(3),
        }
    )
    return lines.to_markdown(index=False)


def _chart_markdown(png: bytes) -> str:
    # The UI's markdown sanitiser allows data: image sources, so the chart shows inline.
    return f"![calibration](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _per_model_floats(overall: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    """Numeric metadata per model, so the Plots tab draws Brier and skill over time."""
    floats: dict[str, dg.MetadataValue] = {}
    for row in overall.itertuples():
        floats[f"brier/{row.model}"] = dg.MetadataValue.float(float(row.mean_brier))
        if not pd.isna(row.skill_vs_market):
            floats[f"skill/{row.model}"] = dg.MetadataValue.float(float(row.skill_vs_market))
    return floats


@dg.asset(
    deps=[forecast_scores],
    automation_condition=automation.LEADERBOARD,
    group_name="evaluation",
    kinds={"pandas", "sql"},
    description=(
        "Each model against the market price on exactly its own predictions: n predictions "
        "and markets, mean Brier and log score, skill vs market (1 - Brier/Brier_market) with "
        "95% intervals from a bootstrap over markets, 'beats the market' only when the "
        "interval excludes zero, expected calibration error; overall, per category and per "
        "horizon, small buckets marked. Questions that resolved before a model's knowledge "
        "cutoff are left out of its scores. Table `model_leaderboard`, and a reliability chart "
        "in the metadata."
    ),
)
def model_leaderboard(
    context: dg.AssetExecutionContext, app_db: AppDatabase
) -> dg.MaterializeResult:
    board = refresh_leaderboard(app_db.engine())
    overall = board.dimension("overall")
    if overall.empty:
        return dg.MaterializeResult(
            metadata={
                "scored_predictions": 0,
                "leaderboard": dg.MetadataValue.md("_empty_"),
                "excluded_known_answers": board.excluded_known_answers,
            }
        )
    judged = overall[~overall["too_small"]]
    best = judged.iloc[0]["model"] if len(judged) else None  # sorted by mean Brier
    chart = calibration_chart(board.calibration, title="Reliability (all scored predictions)")
    context.log.info(
        f"leaderboard over {int(overall['n'].sum())} scored predictions, "
        f"{len(overall)} models; excluded as known answers: {board.excluded_known_answers}"
    )
    return dg.MaterializeResult(
        metadata={
            "scored_predictions": int(overall["n"].sum()),
            "models": len(overall),
            "best_model": str(best),
            "beats_market": ", ".join(sorted(overall.loc[overall["beats_market"], "model"]))
            or "none",
            "leaderboard": dg.MetadataValue.md(_table(overall)),
            "leaderboard_by_category": dg.MetadataValue.md(
                _table(board.dimension("category"), "category")
            ),
            "leaderboard_by_horizon": dg.MetadataValue.md(
                _table(board.dimension("horizon"), "horizon")
            ),
            "calibration_chart": dg.MetadataValue.md(_chart_markdown(chart)),
            "excluded_known_answers": board.excluded_known_answers,
            **_per_model_floats(overall),
        }
    )
