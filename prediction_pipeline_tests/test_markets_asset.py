import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from prediction_pipeline.core.synthetic import SyntheticUniverse
from prediction_pipeline.defs.markets.assets import markets
from prediction_pipeline.resources import AppDatabase, MarketSourceResource, SchemaOutOfDateError
from prediction_pipeline.store.tables import market_snapshots
from prediction_pipeline.store.tables import markets as markets_table

DAY = "2026-11-02"


def _materialize(database_url: str, day: str, size: int = 120) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [markets],
        partition_key=day,
        resources={
            "app_db": AppDatabase(url=database_url),
            "market_source": MarketSourceResource(kind="synthetic", synthetic_size=size),
        },
    )


def _snapshot_rows(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(
                market_snapshots.c.market_id, market_snapshots.c.day, market_snapshots.c.yes_price
            ).order_by(market_snapshots.c.market_id, market_snapshots.c.day)
        ).all()


def test_materialize_twice_is_idempotent(database_url, engine):
    first = _materialize(database_url, DAY)
    assert first.success
    meta = first.asset_materializations_for_node("markets")[0].metadata
    assert meta["new"].value > 50 and meta["skipped"].value == 0
    assert "question" in meta["preview"].value
    checks = first.get_asset_check_evaluations()
    assert len(checks) == 3 and all(c.passed for c in checks)
    rows = _snapshot_rows(engine)

    second = _materialize(database_url, DAY)
    assert second.success
    meta = second.asset_materializations_for_node("markets")[0].metadata
    assert meta["new"].value == 0 and meta["updated"].value == 0
    assert _snapshot_rows(engine) == rows


def test_consecutive_days_grow_history_and_record_resolutions(database_url, engine):
    start = dt.date(2026, 8, 1)
    held = []
    for offset in range(4):
        assert _materialize(database_url, (start + dt.timedelta(days=offset)).isoformat()).success
        with engine.connect() as conn:
            held.append(conn.scalar(sa.select(sa.func.count()).select_from(markets_table)))
    assert held == sorted(held) and held[-1] > held[0]  # new markets open, none are lost
    with engine.connect() as conn:
        days = conn.scalars(sa.select(market_snapshots.c.day).distinct()).all()
    assert len(days) == 4

    # Jump ahead: markets that left the active list are looked up and their end recorded.
    result = _materialize(database_url, (start + dt.timedelta(days=60)).isoformat())
    meta = result.asset_materializations_for_node("markets")[0].metadata
    assert meta["looked_up"].value > 0 and meta["resolved"].value > 0
    with engine.connect() as conn:
        resolved = conn.execute(
            sa.select(markets_table.c.source_id, markets_table.c.resolved_outcome).where(
                markets_table.c.status == "resolved"
            )
        ).all()
    truth = {
        m.source_id: m.resolved_outcome
        for m in SyntheticUniverse(size=120).lookup(
            [sid for sid, _ in resolved], start + dt.timedelta(days=60)
        )
    }
    assert dict(resolved) == truth


def test_unmigrated_database_fails_with_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(SchemaOutOfDateError, match="prediction-pipeline db upgrade"):
        AppDatabase(url=url).engine()


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="PREDICTION_PIPELINE_MARKET_SOURCE"):
        MarketSourceResource(kind="kalshi").open()


def test_a_misconfigured_source_fails_the_run_once_without_retries(database_url):
    """A configuration mistake is not transient: the RetryPolicy must not retry it."""
    resources = {
        "app_db": AppDatabase(url=database_url),
        "market_source": MarketSourceResource(kind="kalshi"),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [markets],
            partition_key="2026-11-02",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        events = instance.all_logs(result.run_id)
    assert not result.success
    starts = [
        e
        for e in events
        if e.dagster_event
        and e.dagster_event.event_type_value
        in ("STEP_START", "STEP_RESTARTED", "STEP_UP_FOR_RETRY")
    ]
    assert [e.dagster_event.event_type_value for e in starts] == ["STEP_START"]
    assert "PREDICTION_PIPELINE_MARKET_SOURCE" in str(
        result.get_step_failure_events()[0].event_specific_data.error
    )


def test_polymarket_source_through_the_asset(database_url, engine):
    """The asset end to end against a Gamma stand-in on loopback: pagination, a malformed
    market skipped and counted, and a held market that left the active list looked up."""
    from prediction_pipeline_tests.fakes.gamma_server import FakeGammaServer, gamma_market

    today = dt.datetime.now(dt.UTC).date().isoformat()
    records = [gamma_market(i) for i in range(150)]
    records.append(gamma_market(999, question="", outcomes="[1"))  # malformed
    with FakeGammaServer(records) as server:
        resources = {
            "app_db": AppDatabase(url=database_url),
            "market_source": MarketSourceResource(kind="polymarket", gamma_url=server.url),
        }
        result = dg.materialize([markets], partition_key=today, resources=resources)
        meta = result.asset_materializations_for_node("markets")[0].metadata
        assert meta["markets"].value == 150 and meta["skipped"].value == 1
        assert len(server.recorded()) >= 2  # more than one keyset page

        # The first market closes and leaves the active list: it is looked up by id.
        closed = gamma_market(0, closed=True, active=False)
        server.markets[0] = closed
        result = dg.materialize([markets], partition_key=today, resources=resources)
        meta = result.asset_materializations_for_node("markets")[0].metadata
        assert meta["looked_up"].value >= 1 and meta["closed"].value == 1
    with engine.connect() as conn:
        status = conn.scalar(
            sa.select(markets_table.c.status).where(
                markets_table.c.source_id == closed["conditionId"]
            )
        )
    assert status == "closed"


def test_hostile_gamma_records_cost_only_themselves(database_url, engine):
    """Bad records among good ones on one Gamma page, through the asset on both databases:
    every good market is stored, long text is cut to its column and counted, and the
    records that cannot be stored (huge numbers, JSON nested thousands deep, an id longer
    than its column) are skipped and counted. On the old code one of them failed the run."""
    from prediction_pipeline_tests.fakes.gamma_server import FakeGammaServer, gamma_market

    today = dt.datetime.now(dt.UTC).date().isoformat()
    good = [gamma_market(i) for i in range(20)]
    long_label = gamma_market(100, events=[{"tags": [{"label": "T" * 200}]}])
    nul_question = gamma_market(101, question="Will\x00 it happen?")
    hostile = [
        gamma_market(102, volumeNum=10**400),
        gamma_market(103, outcomePrices="[1" + "0" * 400 + ", 0]"),
        gamma_market(104, outcomes="[" * 5000 + "]" * 5000),
        gamma_market(105, conditionId="0x" + "f" * 198),
    ]
    records = good[:10] + [long_label, *hostile, nul_question] + good[10:]
    with FakeGammaServer(records) as server:
        result = dg.materialize(
            [markets],
            partition_key=today,
            resources={
                "app_db": AppDatabase(url=database_url),
                "market_source": MarketSourceResource(kind="polymarket", gamma_url=server.url),
            },
        )
    assert result.success
    meta = result.asset_materializations_for_node("markets")[0].metadata
    assert (meta["markets"].value, meta["skipped"].value, meta["truncated"].value) == (22, 4, 1)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(sa.select(markets_table.c.source_id, markets_table.c.category)).all()
        )
        question = conn.scalar(
            sa.select(markets_table.c.question).where(
                markets_table.c.source_id == nul_question["conditionId"]
            )
        )
    expected = {r["conditionId"] for r in [*good, long_label, nul_question]}
    assert set(stored) == expected
    assert stored[long_label["conditionId"]] == "T" * 127 + "…"
    assert question == "Will it happen?"
