"""The leaderboard built from SQL aggregates (both databases) and the knowledge cutoff."""

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from prediction_pipeline.cli import main
from prediction_pipeline.core.leaderboard import (
    leaderboard,
    leaderboard_from_parts,
    leaderboard_from_sums,
)
from prediction_pipeline.core.scoring import score_predictions
from prediction_pipeline.services.leaderboard import BOOTSTRAP_SEED, build_leaderboard
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import scoring as score_store
from prediction_pipeline.store.tables import forecast_scores, markets


@pytest.fixture
def scored(evaluation_world):
    """evaluation_world's world scored by the database; the frame the pure leaderboard
    expects is rebuilt from the stored rows with core.scoring, as the oracle of the SQL
    aggregates."""
    engine = evaluation_world
    with engine.begin() as conn:
        score_store.score_resolutions(conn)
        rows = conn.execute(
            sa.select(
                forecast_scores.c.prediction_id,
                forecast_scores.c.model_slug.label("model"),
                forecast_scores.c.market_id,
                forecast_scores.c.category,
                forecast_scores.c.probability,
                forecast_scores.c.market_price,
                forecast_scores.c.outcome,
                forecast_scores.c.horizon_days,
            )
        ).all()
    frame = pd.DataFrame(rows, columns=list(rows[0]._fields))
    frame["market_price"] = frame["market_price"].astype(float)
    return score_predictions(frame)


@pytest.mark.parametrize(
    ("dimension", "key"),
    [("overall", None), ("category", "category"), ("horizon", "horizon_bucket")],
)
def test_sql_aggregates_give_the_same_leaderboard_as_the_rows(engine, scored, dimension, key):
    by = ["model"] if key is None else ["model", key]
    expected = leaderboard(scored, by=by, seed=BOOTSTRAP_SEED)
    with engine.connect() as conn:
        board = build_leaderboard(conn).dimension(dimension)
    expected = expected.assign(bucket="all" if key is None else expected[key].fillna("(none)"))
    merged = board.merge(expected, on=["model", "bucket"], suffixes=("", "_rows"))
    assert len(merged) == len(board) == len(expected) > 0
    for column in ("n", "n_markets", "n_priced", "too_small", "beats_market"):
        assert (merged[column] == merged[f"{column}_rows"]).all(), column
    for column in ("mean_brier", "brier_lo", "brier_hi", "mean_log_score", "market_brier",
                   "skill_vs_market", "skill_lo", "skill_hi", "ece"):  # fmt: skip
        pd.testing.assert_series_equal(
            merged[column], merged[f"{column}_rows"], check_names=False, rtol=1e-9
        )


@pytest.mark.parametrize("key", [None, "category", "horizon_bucket"])
def test_streamed_parts_keep_each_group_whole(engine, scored, monkeypatch, key):
    """Parts far smaller than a group (7 rows): every (model, bucket) lies in one part, and
    the leaderboard is the same as from all the sums at once."""
    by = ["model"] if key is None else ["model", key]
    with engine.connect() as conn:
        # Default parts (20,000 rows) hold this whole world at once.
        whole = pd.concat(
            list(score_store.leaderboard_market_sum_parts(conn, key)), ignore_index=True
        )
        monkeypatch.setattr(score_store, "PART_ROWS", 7)
        parts = list(score_store.leaderboard_market_sum_parts(conn, key))
    assert len(parts) > 1
    seen = [
        tuple(group)
        for part in parts
        for group in part[by].drop_duplicates().itertuples(index=False)
    ]
    assert len(seen) == len(set(seen))  # no group split across parts
    assert sum(len(part) for part in parts) == len(whole)
    expected = leaderboard_from_sums(whole, by, seed=BOOTSTRAP_SEED)
    streamed = leaderboard_from_parts(iter(parts), by, seed=BOOTSTRAP_SEED)
    pd.testing.assert_frame_equal(streamed, expected)


def test_knowledge_cutoff_excludes_questions_resolved_before_it(engine, scored):
    with engine.connect() as conn:
        closes = conn.execute(
            sa.select(forecast_scores.c.market_id, markets.c.closed_at)
            .join(markets, markets.c.id == forecast_scores.c.market_id)
            .where(forecast_scores.c.model_slug == "baseline/momentum")
        ).all()
        before = build_leaderboard(conn).dimension("overall").set_index("model")
    days = sorted({c.closed_at.date() for c in closes})
    cutoff = days[len(days) // 2]  # half the resolution days fall before it
    known = sum(1 for c in closes if c.closed_at.date() < cutoff)
    assert 0 < known < len(closes)
    with engine.begin() as conn:
        assert model_store.update_model(conn, "baseline/momentum", knowledge_cutoff=cutoff)
    with engine.connect() as conn:
        assert model_store.get_model(conn, "baseline/momentum").knowledge_cutoff == cutoff
        after = build_leaderboard(conn)
    overall = after.dimension("overall").set_index("model")
    assert after.excluded_known_answers == {"baseline/momentum": known}
    assert overall.loc["baseline/momentum", "n"] == before.loc["baseline/momentum", "n"] - known
    # only that model's rows go: the others keep theirs
    assert overall.loc["baseline/market", "n"] == before.loc["baseline/market", "n"]
    kept = scored[(scored["model"] == "baseline/momentum")]
    closed = dict((c.market_id, c.closed_at.date()) for c in closes)
    kept = kept[kept["market_id"].map(closed) >= cutoff]
    assert overall.loc["baseline/momentum", "mean_brier"] == pytest.approx(kept["brier"].mean())


def test_models_add_takes_a_knowledge_cutoff(engine):
    spec = model_store.ModelSpec(
        slug="openai/gpt-4o", provider="openrouter", knowledge_cutoff=dt.date(2024, 10, 1)
    )
    with engine.begin() as conn:
        model_store.upsert_model(conn, spec)
    with engine.connect() as conn:
        assert model_store.knowledge_cutoffs(conn) == {"openai/gpt-4o": dt.date(2024, 10, 1)}


def test_cli_models_add_knowledge_cutoff(database_url, engine, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    runner = CliRunner()
    args = ["--database-url", database_url, "models", "add", "openai/gpt-4o"]
    env = {"DAGSTER_HOME": str(home)}
    ok = runner.invoke(main, [*args, "--knowledge-cutoff", "2024-10-01"], env=env)
    assert ok.exit_code == 0, ok.output
    with engine.connect() as conn:
        assert model_store.get_model(conn, "openai/gpt-4o").knowledge_cutoff == dt.date(2024, 10, 1)
    bad = runner.invoke(main, [*args, "--knowledge-cutoff", "October 2024"], env=env)
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "--knowledge-cutoff" in bad.output
