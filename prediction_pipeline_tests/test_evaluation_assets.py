"""`prediction_deltas`, `forecast_scores` and `model_leaderboard` on a small world."""

import base64
import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.defs.deltas.assets import prediction_deltas
from prediction_pipeline.defs.scoring.assets import forecast_scores, model_leaderboard
from prediction_pipeline.resources import AppDatabase
from prediction_pipeline.store import scoring as score_store
from prediction_pipeline.store.tables import forecast_scores as scores_table
from prediction_pipeline.store.tables import market_snapshots, markets, predictions
from prediction_pipeline.store.tables import prediction_deltas as deltas_table
from prediction_pipeline_tests.evaluation_world import START
from prediction_pipeline_tests.pipeline_helpers import materialization_metadata

SNAPSHOT = START + dt.timedelta(days=7)


@pytest.fixture
def world(evaluation_world, database_url, tmp_path, monkeypatch):
    """The resources over a database holding evaluation_world's world."""
    monkeypatch.setenv("PREDICTION_PIPELINE_DATA_DIR", str(tmp_path))
    return {"app_db": AppDatabase(url=database_url)}


def deltas(world, day=SNAPSHOT, **config):
    return dg.materialize(
        [prediction_deltas],
        partition_key=day.isoformat(),
        resources=world,
        run_config={"ops": {"prediction_deltas": {"config": config}}},
    )


def delta_rows(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(
                deltas_table.c.prediction_id,
                deltas_table.c.snapshot_day,
                deltas_table.c.market_price,
                deltas_table.c.price_then,
                deltas_table.c.delta,
                deltas_table.c.direction,
            ).order_by(deltas_table.c.prediction_id, deltas_table.c.snapshot_day)
        ).all()


def test_deltas_are_idempotent_and_a_longer_lookback_only_adds(world, engine):
    result = deltas(world, days_lookback=3)
    assert result.success
    meta = materialization_metadata(result, "prediction_deltas")
    short = delta_rows(engine)
    assert meta["deltas"] == len(short) > 0
    assert all(check.passed for check in result.get_asset_check_evaluations())
    assert "delta" in meta["largest_movers"]
    assert set(meta["mean_abs_delta_by_model"]) == {"baseline/market", "baseline/momentum"}

    assert deltas(world, days_lookback=3).success  # same day again: same rows
    assert delta_rows(engine) == short

    assert deltas(world, days_lookback=7, chunk_size=100).success  # chunked, wider window
    wide = delta_rows(engine)
    assert set(short) <= set(wide) and len(wide) > len(short)
    assert len({(r.prediction_id, r.snapshot_day) for r in wide}) == len(wide)

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(deltas_table, predictions.c.probability, predictions.c.day).join(predictions)
        ).all()
    for row in rows:
        assert row.delta == pytest.approx(row.market_price - row.probability)
        assert -1 <= row.delta <= 1 and row.abs_delta == pytest.approx(abs(row.delta))
        assert START <= row.day < SNAPSHOT
        if row.price_then is not None and row.direction != "flat":
            moved_toward = abs(row.market_price - row.probability) < abs(
                row.price_then - row.probability
            )
            assert row.direction == ("toward" if moved_toward else "away")


def test_closed_markets_are_left_out_unless_asked(world, engine):
    late = START + dt.timedelta(days=12)  # some predicted markets have closed by now
    open_only = materialization_metadata(deltas(world, late, days_lookback=12), "prediction_deltas")
    with_closed = materialization_metadata(
        deltas(world, late, days_lookback=12, include_closed_markets=True), "prediction_deltas"
    )
    assert with_closed["deltas"] > open_only["deltas"]


def test_scores_and_leaderboard(world, engine, tmp_path):
    result = dg.materialize([forecast_scores, model_leaderboard], resources=world)
    assert result.success
    meta = materialization_metadata(result, "forecast_scores")
    with engine.connect() as conn:
        resolved_predictions = conn.scalar(
            sa.select(sa.func.count())
            .select_from(predictions.join(markets))
            .where(markets.c.status == "resolved", markets.c.resolved_outcome.in_(["yes", "no"]))
        )
        scores = conn.execute(sa.select(scores_table)).all()
    assert meta["newly_scored"] == resolved_predictions == len(scores) > 0
    assert "excluded_closed_unresolved" in meta and "excluded_void" in meta
    for row in scores:
        assert row.brier == pytest.approx((row.probability - row.outcome) ** 2)
        if row.model_slug == "baseline/market":  # the market baseline is the market price
            assert row.brier == pytest.approx(row.market_brier)

    board = materialization_metadata(result, "model_leaderboard")
    assert "baseline/momentum" in board["leaderboard"] and "95% CI" in board["leaderboard"]
    # the chart is in the metadata itself, as a PNG data URI the UI renders
    prefix = "![calibration](data:image/png;base64,"
    assert board["calibration_chart"].startswith(prefix)
    png = base64.b64decode(board["calibration_chart"][len(prefix) : -1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with engine.connect() as conn:
        overall = score_store.read_leaderboard(conn, "overall").set_index("model")
        categories = score_store.read_leaderboard(conn, "category")
        horizons = score_store.read_leaderboard(conn, "horizon")
    assert set(overall.index) == {"baseline/market", "baseline/momentum"}  # no pooled row
    market = overall.loc["baseline/market"]
    assert market["skill_vs_market"] == pytest.approx(0.0, abs=1e-12)
    assert market["skill_lo"] == pytest.approx(0.0, abs=1e-12) and not market["beats_market"]
    assert market["mean_brier"] == pytest.approx(market["market_brier"])
    assert overall.loc["baseline/market", "n"] == overall.loc["baseline/momentum", "n"]
    for model, row in overall.iterrows():
        assert board[f"brier/{model}"] == pytest.approx(row["mean_brier"])
        assert board[f"skill/{model}"] == pytest.approx(row["skill_vs_market"])
        assert row["brier_lo"] <= row["mean_brier"] <= row["brier_hi"]
        assert row["n_markets"] <= row["n"]
    assert len(categories) > len(overall) and set(horizons["bucket"]) <= {
        "0-7d",
        "8-30d",
        "31-90d",
        ">90d",
        "(none)",
    }
    assert sum(categories["n"]) == sum(overall["n"]) == sum(horizons["n"])

    again = dg.materialize([forecast_scores, model_leaderboard], resources=world)
    assert materialization_metadata(again, "forecast_scores")["newly_scored"] == 0
    with engine.connect() as conn:
        assert len(score_store.read_leaderboard(conn, "overall")) == len(overall)


def test_scoring_with_nothing_resolved_is_empty_not_an_error(
    database_url, engine, tmp_path, monkeypatch
):
    monkeypatch.setenv("PREDICTION_PIPELINE_DATA_DIR", str(tmp_path))
    result = dg.materialize(
        [forecast_scores, model_leaderboard], resources={"app_db": AppDatabase(url=database_url)}
    )
    assert result.success
    assert materialization_metadata(result, "forecast_scores")["newly_scored"] == 0
    assert materialization_metadata(result, "model_leaderboard")["scored_predictions"] == 0


def test_a_bad_price_fails_the_deltas_at_once_and_writes_nothing(world, engine):
    snapshots = market_snapshots.c
    first_today = sa.select(sa.func.min(snapshots.id)).where(snapshots.day == SNAPSHOT)
    with engine.begin() as conn:
        conn.execute(
            sa.update(market_snapshots)
            .where(snapshots.id == first_today.scalar_subquery())
            .values(yes_price=1.5)
        )
    result = dg.materialize(
        [prediction_deltas],
        partition_key=SNAPSHOT.isoformat(),
        resources=world,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "outside [0, 1]" in failure.step_failure_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert delta_rows(engine) == []
