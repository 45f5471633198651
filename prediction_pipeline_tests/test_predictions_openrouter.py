"""`predictions` against a real HTTP server on loopback standing in for OpenRouter.

Whatever the server does, each selected market ends either stored once in `predictions`
or recorded in `prediction_failures`: nothing lost, nothing doubled.
"""

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.core.selection import select_markets
from prediction_pipeline.defs.predictions.assets import predictions
from prediction_pipeline.defs.predictions.config import PredictionsConfig
from prediction_pipeline.resources import AppDatabase, Forecasters
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import predictions as prediction_store
from prediction_pipeline.store import spend as spend_store
from prediction_pipeline.store.tables import prediction_failures
from prediction_pipeline.store.tables import predictions as predictions_table
from prediction_pipeline_tests.fakes.openrouter_server import (
    Behaviour,
    FakeOpenRouterServer,
    Fault,
)
from prediction_pipeline_tests.pipeline_helpers import (
    DAY,
    ingest_days,
    materialization_metadata,
    partition,
)

MODEL = "acme/oracle-1"
KEY = "sk-or-v1-test-SECRET-0123456789"
TOP = 15


@pytest.fixture
def server():
    with FakeOpenRouterServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def setup(database_url, engine):
    with dg.DagsterInstance.ephemeral() as instance:
        ingest_days(database_url, instance, days=1, size=150)
        with engine.begin() as conn:
            model_store.upsert_model(
                conn,
                model_store.ModelSpec(
                    MODEL, "openrouter", max_in_flight=2, requests_per_second=200
                ),
            )
        instance.add_dynamic_partitions("models", [MODEL])
        yield instance


def forecasters(server, **overrides) -> Forecasters:
    settings = {
        "openrouter_api_key": KEY,
        "openrouter_base_url": server.base_url,
        "timeout_seconds": 1.0,
        "max_http_attempts": 6,
        "retry_initial_wait_seconds": 0.01,
        "retry_max_wait_seconds": 0.2,
    }
    return Forecasters(**{**settings, **overrides})


def materialize(database_url, instance, server, config=None, **overrides):
    return dg.materialize(
        [predictions],
        partition_key=partition(MODEL),
        instance=instance,
        resources={
            "app_db": AppDatabase(url=database_url),
            "forecasters": forecasters(server, **overrides),
        },
        run_config={
            "ops": {"predictions": {"config": {"top_markets_count": TOP, **(config or {})}}}
        },
    )


def invoke(database_url, instance, server, config=None, **overrides):
    """Call the asset directly: no op retry policy, so a Failure surfaces at once."""
    context = dg.build_asset_context(
        partition_key=partition(MODEL),
        instance=instance,
        resources={
            "app_db": AppDatabase(url=database_url),
            "forecasters": forecasters(server, **overrides),
        },
    )
    return predictions(
        context=context, config=PredictionsConfig(top_markets_count=TOP, **(config or {}))
    )


def selected_markets(engine, top=TOP):
    with engine.connect() as conn:
        rows = prediction_store.candidate_markets(conn, DAY)
    return select_markets(
        rows, DAY, top_markets_count=top, target_days_from_now=1, end_date_range_hours=24 * 60
    )


def keyword(market_row) -> str:
    # The synthetic description names each market uniquely ("Synthetic market #123 in ...").
    return f"Synthetic market #{market_row.source_id[4:].lstrip('0')} in"


def stored(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(
                predictions_table.c.market_id,
                predictions_table.c.model_slug,
                predictions_table.c.day,
            )
        ).all()


def failures(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(prediction_failures)).all()


def test_transient_faults_are_retried_and_every_market_stored_once(
    database_url, engine, setup, server
):
    faults = [
        Behaviour(Fault.RATE_LIMITED, retry_after=0.05),
        Fault.UNAVAILABLE,
        Fault.BAD_GATEWAY,
        Fault.SERVER_ERROR,
        Fault.ERROR_IN_200,
        Fault.FINISH_ERROR,
        Fault.GARBAGE,
        Fault.TRUNCATED,
        Fault.DROP,
        Behaviour(Fault.SLOW, delay=2.0),  # longer than the 1 s client timeout
        Fault.IN_FLIGHT_BUDGET,
    ]
    for fault in faults:  # each fault followed by a good answer
        server.enqueue(fault, Fault.OK)
    with engine.begin() as conn:  # one call at a time: each re-ask gets the good answer
        model_store.update_model(conn, MODEL, max_in_flight=1)
    result = materialize(database_url, setup, server)
    assert result.success
    meta = materialization_metadata(result, "predictions")
    assert (meta["predicted"], meta["failed"]) == (TOP, 0)
    assert meta["http_429s"] >= 1 and meta["retries"] >= 8
    rows = stored(engine)
    assert len(rows) == len(set(rows)) == TOP
    assert failures(engine) == []
    assert server.request_count == TOP + len(faults)  # one extra request per fault, no more
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_persistent_bad_answers_are_dead_lettered_then_redriven(
    database_url, engine, setup, server
):
    garbage, out_of_range = selected_markets(engine)[3:5]
    server.on_keyword(keyword(garbage), Fault.GARBAGE, forever=True)
    server.on_keyword(keyword(out_of_range), Fault.OUT_OF_RANGE, forever=True)
    result = materialize(database_url, setup, server, {"max_failure_share": 0.2})
    assert result.success
    meta = materialization_metadata(result, "predictions")
    assert (meta["predicted"], meta["failed"]) == (TOP - 2, 2)
    coverage = next(
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == "predictions_cover_selected_markets"
    )
    assert not coverage.passed and coverage.metadata["missing"].value == 2
    letters = {row.market_id: row for row in failures(engine)}
    assert set(letters) == {garbage.id, out_of_range.id}
    assert all(row.attempts == 2 and row.resolved_at is None for row in letters.values())
    assert (
        "1.7" in letters[out_of_range.id].last_error
        or "less than or equal" in letters[out_of_range.id].last_error
    )

    # The model behaves again: a re-run asks only for the two missing markets.
    server.reset()
    result = materialize(database_url, setup, server, {"max_failure_share": 0.2})
    meta = materialization_metadata(result, "predictions")
    assert (meta["predicted"], meta["skipped_existing"]) == (2, TOP - 2)
    assert server.request_count == 2
    assert len(stored(engine)) == len(set(stored(engine))) == TOP
    assert all(row.resolved_at is not None for row in failures(engine))


def test_invalid_answers_are_paid_for_in_the_spend_and_the_report(
    database_url, engine, setup, server
):
    # Every ask for one market gets a billed but invalid answer (both asks fail): what the
    # provider billed is what the report and the spend ledger say, invalid answers included.
    garbage = selected_markets(engine)[0]
    server.on_keyword(keyword(garbage), Fault.GARBAGE, forever=True)
    result = materialize(database_url, setup, server, {"max_failure_share": 0.2})
    meta = materialization_metadata(result, "predictions")
    assert (meta["predicted"], meta["failed"]) == (TOP - 1, 1)
    assert server.counts["garbage"] == 2
    assert meta["cost_usd"] == pytest.approx(server.total_cost, abs=1e-6)
    with engine.connect() as conn:
        assert spend_store.spent_usd(conn, MODEL, DAY) == pytest.approx(server.total_cost)
    assert meta["day_spent_usd"] == pytest.approx(server.total_cost, abs=1e-6)


def test_too_many_failures_fail_the_partition_and_keep_the_rest(
    database_url, engine, setup, server
):
    for market in selected_markets(engine)[:3]:
        server.on_keyword(keyword(market), Fault.UNAVAILABLE, forever=True)
    with pytest.raises(dg.Failure, match=r"3 of 15 markets failed \(20% > 5%\)"):
        invoke(database_url, setup, server, max_http_attempts=2)
    assert len(stored(engine)) == TOP - 3  # what succeeded is kept for the retry
    assert len(failures(engine)) == 3


def test_bad_key_stops_at_once_and_never_leaks(database_url, engine, setup, server):
    wrong = "sk-or-v1-WRONG-do-not-print-me"
    with pytest.raises(dg.Failure) as failure:
        invoke(database_url, setup, server, openrouter_api_key=wrong)
    message = str(failure.value) + repr(failure.value.metadata)
    assert "401" in message or "key" in message.lower()
    assert wrong not in message
    assert server.request_count <= 2  # stopped at the first answer, not once per market
    assert stored(engine) == [] and failures(engine) == []


def test_spend_cap_skips_the_rest_for_budget(database_url, engine, setup, server):
    result = materialize(database_url, setup, server, {"max_cost_usd": 0.0005})
    assert result.success
    meta = materialization_metadata(result, "predictions")
    assert meta["predicted"] >= 1 and meta["skipped_budget"] >= 1
    assert meta["predicted"] + meta["skipped_budget"] == TOP and meta["failed"] == 0
    kinds = {row.kind for row in failures(engine)}
    assert kinds == {"budget"}
    with engine.connect() as conn:
        assert spend_store.spent_usd(conn, MODEL, DAY) >= 0.0005


def test_web_search_and_hidden_price_reach_the_request(database_url, engine, setup, server):
    result = materialize(
        database_url,
        setup,
        server,
        {"use_web_search": True, "top_markets_count": 3, "experiment_tag": "web"},
    )
    assert result.success
    bodies = [request.body for request in server.requests]
    assert all(body["plugins"] == [{"id": "web"}] for body in bodies)
    assert all(body["response_format"]["json_schema"]["strict"] for body in bodies)
    assert all(body["provider"]["require_parameters"] for body in bodies)
    prompt = " ".join(m["content"] for m in bodies[0]["messages"])
    assert "market price" not in prompt.lower()  # off by default: models copy it
    with engine.connect() as conn:
        rows = conn.execute(sa.select(predictions_table)).all()
    assert all(r.web_search_used and r.cost_usd > 0 and r.experiment_tag == "web" for r in rows)
    assert all(r.run_id == result.run_id for r in rows)
