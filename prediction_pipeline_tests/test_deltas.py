"""Delta snapshots against hand-computed values."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from prediction_pipeline.core.deltas import (
    DELTA_COLUMNS,
    compute_deltas,
    largest_movers,
    mean_abs_delta_by_model,
)

SNAPSHOT = dt.date(2026, 1, 5)


def predictions(rows: list[tuple]) -> pd.DataFrame:
    """rows: (prediction_id, model, market_id, day, probability, market_price then)."""
    return pd.DataFrame(
        rows, columns=["prediction_id", "model", "market_id", "day", "probability", "market_price"]
    )


def prices(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["market_id", "yes_price"])


D1 = dt.date(2026, 1, 1)
PREDICTIONS = predictions(
    [
        (1, "A", "m1", D1, 0.7, 0.5),  # now 0.6: |0.6-0.7| 0.1 < |0.5-0.7| 0.2 -> toward
        (2, "B", "m1", D1, 0.4, 0.5),  # now 0.6: |0.6-0.4| 0.2 > |0.5-0.4| 0.1 -> away
        (3, "A", "m2", D1, 0.3, 0.5),  # now 0.5: unchanged -> flat
        (4, "B", "m2", D1, 0.3, np.nan),  # no price then -> unknown
        (5, "A", "m3", D1, 0.5, 0.5),  # m3 has no price today -> left out
        (6, "A", "m1", dt.date(2026, 1, 6), 0.5, 0.6),  # made after the snapshot -> left out
        (7, "B", "m4", D1, 0.5, 0.4),  # now 0.6: mirror of 0.4 around 0.5 -> flat
    ]
)
PRICES = prices([("m1", 0.6), ("m2", 0.5), ("m3", np.nan), ("m4", 0.6)])


def by_id(deltas: pd.DataFrame) -> pd.DataFrame:
    return deltas.set_index("prediction_id")


def test_compute_deltas_hand_values():
    deltas = compute_deltas(PREDICTIONS, PRICES, SNAPSHOT)
    assert list(deltas.columns) == list(DELTA_COLUMNS)
    assert sorted(deltas["prediction_id"]) == [1, 2, 3, 4, 7]
    d = by_id(deltas)
    np.testing.assert_allclose(d.loc[[1, 2, 3, 4, 7], "market_price"], [0.6, 0.6, 0.5, 0.5, 0.6])
    np.testing.assert_allclose(d.loc[[1, 2, 3, 4, 7], "delta"], [-0.1, 0.2, 0.2, 0.2, 0.1])
    np.testing.assert_allclose(d.loc[[1, 2, 3, 4, 7], "abs_delta"], [0.1, 0.2, 0.2, 0.2, 0.1])
    assert d.loc[[1, 2, 3, 4, 7], "direction"].tolist() == [
        "toward",
        "away",
        "flat",
        "unknown",
        "flat",
    ]
    assert set(deltas["snapshot_day"]) == {SNAPSHOT}


@pytest.mark.parametrize(
    ("probability", "then", "now", "direction"),
    [
        (0.8, 0.3, 0.5, "toward"),
        (0.8, 0.5, 0.3, "away"),
        (0.2, 0.5, 0.3, "toward"),
        (0.2, 0.3, 0.9, "away"),
        (0.6, 0.9, 0.35, "toward"),  # crossed p and ended closer: 0.25 < 0.3
        (0.6, 0.7, 0.4, "away"),  # crossed p and ended further: 0.2 > 0.1
        (0.1, 0.3, 0.3, "flat"),
    ],
)
def test_direction_cases(probability, then, now, direction):
    deltas = compute_deltas(
        predictions([(1, "A", "m", D1, probability, then)]), prices([("m", now)]), SNAPSHOT
    )
    assert deltas["direction"].tolist() == [direction]
    assert deltas["delta"].iloc[0] == pytest.approx(now - probability)


def test_deltas_stay_within_minus_one_and_one():
    deltas = compute_deltas(
        predictions([(1, "A", "yes", D1, 0.0, 0.5), (2, "A", "no", D1, 1.0, 0.5)]),
        prices([("yes", 1.0), ("no", 0.0)]),
        SNAPSHOT,
    )
    d = by_id(deltas)
    assert d.loc[1, "delta"] == pytest.approx(1.0)
    assert d.loc[2, "delta"] == pytest.approx(-1.0)
    assert d["abs_delta"].tolist() == [1.0, 1.0]
    assert d["direction"].tolist() == ["away", "away"]


def test_snapshot_day_accepts_a_string_and_day_a_timestamp():
    preds = predictions([(1, "A", "m1", pd.Timestamp("2026-01-05 18:30"), 0.7, 0.5)])
    deltas = compute_deltas(preds, prices([("m1", 0.6)]), "2026-01-05")
    assert deltas["snapshot_day"].tolist() == [SNAPSHOT]
    assert deltas["direction"].tolist() == ["toward"]
    assert compute_deltas(preds, prices([("m1", 0.6)]), "2026-01-04").empty


def test_compute_deltas_empty_inputs_give_empty_frames():
    empty_preds = compute_deltas(predictions([]), PRICES, SNAPSHOT)
    assert empty_preds.empty
    assert list(empty_preds.columns) == list(DELTA_COLUMNS)
    empty_prices = compute_deltas(PREDICTIONS, prices([]), SNAPSHOT)
    assert empty_prices.empty
    assert list(empty_prices.columns) == list(DELTA_COLUMNS)


def test_compute_deltas_rejects_bad_input():
    with pytest.raises(ValueError, match="more than one price"):
        compute_deltas(PREDICTIONS, prices([("m1", 0.6), ("m1", 0.7)]), SNAPSHOT)
    with pytest.raises(ValueError, match="yes_price"):
        compute_deltas(PREDICTIONS, prices([("m1", 1.5)]), SNAPSHOT)
    with pytest.raises(ValueError, match="probability"):
        compute_deltas(predictions([(1, "A", "m1", D1, -0.1, 0.5)]), PRICES, SNAPSHOT)
    with pytest.raises(ValueError, match="missing columns"):
        compute_deltas(PREDICTIONS.drop(columns=["day"]), PRICES, SNAPSHOT)


def test_largest_movers():
    deltas = pd.DataFrame(
        {
            "prediction_id": [1, 2, 3, 4],
            "abs_delta": [0.1, 0.3, 0.05, 0.3],
        }
    )
    top = largest_movers(deltas, n=3)
    assert top["prediction_id"].tolist() == [2, 4, 1]
    assert largest_movers(deltas, n=10)["prediction_id"].tolist() == [2, 4, 1, 3]
    assert largest_movers(deltas, n=0).empty
    with pytest.raises(ValueError):
        largest_movers(deltas, n=-1)


def test_mean_abs_delta_by_model():
    deltas = compute_deltas(PREDICTIONS, PRICES, SNAPSHOT)
    with_model = deltas.merge(PREDICTIONS[["prediction_id", "model"]], on="prediction_id")
    got = mean_abs_delta_by_model(with_model)
    assert list(got.columns) == ["model", "n", "mean_abs_delta"]
    # A: ids 1, 3 -> (0.1 + 0.2) / 2 = 0.15; B: ids 2, 4, 7 -> (0.2 + 0.2 + 0.1) / 3
    assert got["model"].tolist() == ["A", "B"]
    assert got["n"].tolist() == [2, 3]
    np.testing.assert_allclose(got["mean_abs_delta"], [0.15, 0.5 / 3])
