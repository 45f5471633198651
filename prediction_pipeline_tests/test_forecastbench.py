"""The `forecastbench` market source: a backtest on a ForecastBench question set, scored by
the normal `markets`, `predictions`, `forecast_scores` and `model_leaderboard` assets."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.forecastbench import load
from prediction_pipeline.clients.market_sources import ForecastBenchSource
from prediction_pipeline.core.forecastbench import ForecastBenchFormatError, load_benchmark
from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.defs.markets.assets import markets
from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.defs.scoring.assets import forecast_scores, model_leaderboard
from prediction_pipeline.resources import AppDatabase, Forecasters, MarketSourceResource
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import scoring as score_store
from prediction_pipeline.store.tables import forecast_scores as scores_table
from prediction_pipeline_tests.pipeline_helpers import materialization_metadata

FIXTURES = Path(__file__).parent / "fixtures" / "forecastbench"
QUESTIONS = FIXTURES / "2026-03-15-llm.json"
RESOLUTIONS = FIXTURES / "2026-03-15_resolution_set.json"
FREEZE = dt.date(2026, 3, 5)
AFTER_ALL = dt.date(2026, 7, 1)
# Worked out by hand in fixtures/forecastbench/README.md: 18 resolved market questions.
HAND_BRIER = 2.527525 / 18


def hand_pairs() -> list[tuple[float, float]]:
    """(freeze price, outcome) of the resolved market questions, read from the raw JSON."""
    questions = json.loads(QUESTIONS.read_text())["questions"]
    resolutions = json.loads(RESOLUTIONS.read_text())["resolutions"]
    outcome = {
        r["id"]: r["resolved_to"]
        for r in resolutions
        if isinstance(r["id"], str) and r["source"] == "polymarket" and r["resolved"]
    }
    return [
        (float(q["freeze_datetime_value"]), outcome[q["id"]])
        for q in questions
        if isinstance(q["id"], str) and q["source"] == "polymarket" and q["id"] in outcome
    ]


def test_the_fixture_brier_by_hand():
    pairs = hand_pairs()
    assert len(pairs) == 18
    assert sum((p - o) ** 2 for p, o in pairs) / len(pairs) == pytest.approx(HAND_BRIER)


def test_loads_market_questions_and_counts_the_rest():
    bench = load(str(QUESTIONS), str(RESOLUTIONS))
    assert bench.question_set == "2026-03-15-llm.json"
    assert len(bench.questions) == 20
    assert dict(bench.skipped) == {
        "freeze value missing or outside [0, 1]": 1,
        "not a market question (fred)": 1,
        "not a market question (acled)": 1,
        "combination question": 1,
    }
    resolved = [q for q in bench.questions.values() if q.resolved_outcome]
    assert len(resolved) == 18
    fed = bench.questions["polymarket:fb-poly-001-fed-cut-april-2026"]
    assert (fed.freeze_day, fed.freeze_price) == (FREEZE, 0.215)
    # the first horizon date that shows it resolved is 2026-06-13, but the market closed
    # (and settled) on 2026-04-29: the earlier date is when the answer became knowable
    assert (fed.resolved_outcome, fed.resolved_on) == ("no", dt.date(2026, 4, 29))
    # an unresolved market keeps no outcome whatever its close date
    assert bench.questions["polymarket:fb-poly-006-nba-finals-game7"].resolved_on is None


def test_the_source_opens_on_the_freeze_day_and_resolves_later():
    source = ForecastBenchSource(str(QUESTIONS), str(RESOLUTIONS))
    assert source.fetch_active(FREEZE - dt.timedelta(days=1)).markets == []
    batch = source.fetch_active(FREEZE)
    assert len(batch.markets) == 20
    assert sorted(s.reason for s in batch.skipped) == [
        "1 question(s): combination question",
        "1 question(s): freeze value missing or outside [0, 1]",
        "1 question(s): not a market question (acled)",
        "1 question(s): not a market question (fred)",
    ]
    assert all(m.status is MarketStatus.OPEN for m in batch.markets)
    assert {m.source_id: m.yes_price for m in batch.markets}[
        "polymarket:fb-poly-012-gold-above-3000-mar"
    ] == 0.88
    assert source.fetch_active(FREEZE + dt.timedelta(days=1)).markets == []  # opens once
    later = source.lookup([m.source_id for m in batch.markets], AFTER_ALL).markets
    statuses = {m.source_id: m for m in later}
    assert sum(m.status is MarketStatus.RESOLVED for m in later) == 18
    unresolved = statuses["polymarket:fb-poly-006-nba-finals-game7"]
    assert unresolved.status is MarketStatus.OPEN and unresolved.yes_price is None  # no price


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json at all", "is not JSON"),
        ('{"forecast_due_date": "2026-03-15", "question_set": "x"}', "questions"),
        ('{"forecast_due_date": "2026-03-15", "question_set": "x", "questions": 7}', "questions"),
        ("[1, 2]", "QuestionSet"),
    ],
)
def test_malformed_question_sets_fail_with_one_clear_line(tmp_path, payload, message):
    path = tmp_path / "set.json"
    path.write_text(payload)
    with pytest.raises(ForecastBenchFormatError, match=message) as caught:
        load(str(path), None)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_missing_file_and_a_malformed_resolution_set(tmp_path):
    with pytest.raises(ForecastBenchFormatError, match="cannot read"):
        load(str(tmp_path / "missing.json"), None)
    questions = json.loads(QUESTIONS.read_text())
    with pytest.raises(ForecastBenchFormatError, match="resolutions"):
        load_benchmark(questions, {"forecast_due_date": "2026-03-15"})


def test_the_source_needs_a_question_set():
    with pytest.raises(ValueError, match="PREDICTION_PIPELINE_FORECASTBENCH_QUESTIONS"):
        MarketSourceResource(kind="forecastbench").open()


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("models", ["baseline/market", "baseline/momentum"])
        yield instance


def backtest_resources(database_url: str) -> dict:
    return {
        "app_db": AppDatabase(url=database_url),
        "market_source": MarketSourceResource(
            kind="forecastbench",
            forecastbench_questions=str(QUESTIONS),
            forecastbench_resolutions=str(RESOLUTIONS),
        ),
        "forecasters": Forecasters(),
    }


def test_a_backtest_scores_the_market_baseline_as_by_hand(
    database_url, engine, instance, tmp_path, monkeypatch
):
    monkeypatch.setenv("PREDICTION_PIPELINE_DATA_DIR", str(tmp_path))
    resources = backtest_resources(database_url)
    for day in (FREEZE, AFTER_ALL):
        ingested = dg.materialize(
            [markets], partition_key=day.isoformat(), resources=resources, instance=instance
        )
        assert ingested.success
    config = {"top_markets_count": 100, "target_days_from_now": 0, "end_date_range_hours": 24 * 200}
    predicted = dg.materialize(
        [predictions],
        partition_key=dg.MultiPartitionKey({"day": FREEZE.isoformat(), "model": "baseline/market"}),
        resources=resources,
        instance=instance,
        run_config={"ops": {"predictions": {"config": config}}},
    )
    assert predicted.success
    assert materialization_metadata(predicted, "predictions")["predicted"] == 20
    scored = dg.materialize([forecast_scores, model_leaderboard], resources=resources)
    assert scored.success
    assert materialization_metadata(scored, "forecast_scores")["newly_scored"] == 18
    with engine.connect() as conn:
        overall = score_store.read_leaderboard(conn, "overall").set_index("model")
        pairs = conn.execute(sa.select(scores_table.c.market_price, scores_table.c.outcome)).all()
    assert sorted(pairs) == sorted(hand_pairs())
    market = overall.loc["baseline/market"]
    assert market["n"] == 18 and market["n_markets"] == 18
    assert market["mean_brier"] == pytest.approx(HAND_BRIER)
    assert market["market_brier"] == pytest.approx(HAND_BRIER)
    assert market["skill_vs_market"] == pytest.approx(0.0, abs=1e-12)


def test_a_backtest_leaves_out_what_a_model_may_know(
    database_url, engine, instance, tmp_path, monkeypatch
):
    """With a knowledge cutoff of 2026-04-14, the questions that settled before it are known
    answers for that model: left out, and counted."""
    monkeypatch.setenv("PREDICTION_PIPELINE_DATA_DIR", str(tmp_path))
    resources = backtest_resources(database_url)
    for day in (FREEZE, AFTER_ALL):
        assert dg.materialize(
            [markets], partition_key=day.isoformat(), resources=resources, instance=instance
        ).success
    with engine.begin() as conn:
        model_store.update_model(conn, "baseline/market", knowledge_cutoff=dt.date(2026, 4, 14))
    config = {"top_markets_count": 100, "target_days_from_now": 0, "end_date_range_hours": 24 * 200}
    assert dg.materialize(
        [predictions],
        partition_key=dg.MultiPartitionKey({"day": FREEZE.isoformat(), "model": "baseline/market"}),
        resources=resources,
        instance=instance,
        run_config={"ops": {"predictions": {"config": config}}},
    ).success
    result = dg.materialize([forecast_scores, model_leaderboard], resources=resources)
    bench = load(str(QUESTIONS), str(RESOLUTIONS))
    known = [
        q
        for q in bench.questions.values()
        if q.resolved_on and q.resolved_on < dt.date(2026, 4, 14)
    ]
    kept = [q for q in bench.questions.values() if q.resolved_on and q not in known]
    assert 0 < len(known) < 18
    meta = materialization_metadata(result, "model_leaderboard")
    assert meta["excluded_known_answers"] == {"baseline/market": len(known)}
    with engine.connect() as conn:
        overall = score_store.read_leaderboard(conn, "overall").set_index("model")
    assert overall.loc["baseline/market", "n"] == len(kept) == 18 - len(known)
    by_hand = [(q.freeze_price - (q.resolved_outcome == "yes")) ** 2 for q in kept]
    assert overall.loc["baseline/market", "mean_brier"] == pytest.approx(sum(by_hand) / len(kept))
