"""The set-based SQL delta path writes exactly what the chunked pandas path it replaced
wrote (kept in benchmarks/deltas_chunked.py as the baseline), on a seeded world, on SQLite
and PostgreSQL, with the same summary."""

import datetime as dt

import sqlalchemy as sa

from benchmarks.deltas_chunked import chunked_snapshot_deltas
from prediction_pipeline.services.deltas import snapshot_deltas
from prediction_pipeline.store.tables import prediction_deltas, predictions
from prediction_pipeline_tests.evaluation_world import START

SNAPSHOT = START + dt.timedelta(days=7)
LATE = START + dt.timedelta(days=12)  # some predicted markets have closed by then
#: (snapshot day, options, chunk size): windows, filters, a cap, chunks inside one day.
CASES = [
    (SNAPSHOT, {}, 200_000),
    (SNAPSHOT, {}, 7),
    (START + dt.timedelta(days=4), {"days_lookback": 2}, 200_000),
    (LATE, {"days_lookback": 12, "include_closed_markets": True}, 50),
    (LATE, {"days_lookback": 12}, 50),
    (SNAPSHOT, {"exclude_categories": ["Politics", "sports"]}, 50),
    (SNAPSHOT, {"max_predictions": 61}, 7),
    (SNAPSHOT, {"max_predictions": 61}, 200_000),
]

COLUMNS = ("prediction_id", "snapshot_day", "market_price", "price_then", "delta", "abs_delta")


def stored(engine) -> list[tuple]:
    d = prediction_deltas.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(*(d[c] for c in COLUMNS), d.direction).order_by(
                d.prediction_id, d.snapshot_day
            )
        ).all()
    return [tuple(r) for r in rows]


def clear(engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(prediction_deltas))


def test_sql_path_writes_what_the_chunked_pandas_path_wrote(evaluation_world):
    engine = evaluation_world
    for day, options, chunk_size in CASES:
        case = f"{day} {options} chunk_size={chunk_size}"
        clear(engine)
        old = chunked_snapshot_deltas(engine, day, chunk_size=chunk_size, **options)
        expected = stored(engine)
        assert old.rows == len(expected) > 0, case
        clear(engine)

        new = snapshot_deltas(engine, day, chunk_size=chunk_size, **options)
        # Same rows, bit for bit: both compute in IEEE doubles with the same operations.
        assert stored(engine) == expected, case
        assert new.rows == old.rows, case
        assert new.by_direction == dict(sorted(old.by_direction.items())), case
        assert new.mean_abs_delta_by_model == old.mean_abs_delta_by_model(), case
        assert [m.abs_delta for m in new.movers] == old.movers["abs_delta"].tolist(), case

        # Idempotent: the same run again rewrites the same rows, no duplicate.
        again = snapshot_deltas(engine, day, chunk_size=chunk_size, **options)
        assert stored(engine) == expected, case
        assert again.rows == new.rows, case


def test_one_statement_per_day_or_per_chunk_of_a_bigger_day(evaluation_world):
    engine = evaluation_world
    one = snapshot_deltas(engine, SNAPSHOT, chunk_size=200_000)
    many = snapshot_deltas(engine, SNAPSHOT, chunk_size=3)
    with engine.connect() as conn:
        per_day = conn.execute(
            sa.select(sa.func.count())
            .where(predictions.c.day >= START, predictions.c.day < SNAPSHOT)
            .group_by(predictions.c.day)
        ).scalars()
        # a chunk ends after every 3rd prediction of a day; the rest is one more statement
        expected = sum(n // 3 + 1 for n in per_day)
    assert one.statements == 7  # one per window day
    assert many.statements == expected > 7
    assert many.rows == one.rows
