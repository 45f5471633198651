"""Scoring against hand-computed values (every expected number below is worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prediction_pipeline.core.scoring import (
    CALIBRATION_COLUMNS,
    LEADERBOARD_METRICS,
    brier,
    calibration_bins,
    calibration_chart,
    expected_calibration_error,
    horizon_bucket,
    leaderboard,
    log_score,
    score_predictions,
)

LN_0_2 = -1.6094379124341003
LN_0_3 = -1.2039728043259361
LN_0_5 = -0.6931471805599453
LN_0_6 = -0.5108256237659907
LN_0_7 = -0.35667494393873245
LN_0_8 = -0.22314355131420976
LN_EPS = -9.210340371976182  # ln(1e-4): the floor of the log score
LN_1_MINUS_EPS = -0.00010000500033334732  # ln(1 - 1e-4)


def frame(rows: list[tuple]) -> pd.DataFrame:
    """rows: (prediction_id, model, market_id, category, probability, market_price, outcome)."""
    return pd.DataFrame(
        rows,
        columns=[
            "prediction_id",
            "model",
            "market_id",
            "category",
            "probability",
            "market_price",
            "outcome",
        ],
    )


# The 3-prediction example. Per row: brier, market brier
#   A m1: (0.8-1)^2 = 0.04, (0.6-1)^2 = 0.16
#   A m2: (0.3-0)^2 = 0.09, (0.2-0)^2 = 0.04
#   B m1: (0.5-1)^2 = 0.25, (0.6-1)^2 = 0.16
THREE = [
    (1, "A", "m1", "politics", 0.8, 0.6, 1.0),
    (2, "A", "m2", "sports", 0.3, 0.2, 0.0),
    (3, "B", "m1", "politics", 0.5, 0.6, 1.0),
]


def row(board: pd.DataFrame, **keys) -> pd.Series:
    mask = np.ones(len(board), dtype=bool)
    for key, value in keys.items():
        mask &= (board[key] == value).to_numpy()
    assert mask.sum() == 1, f"expected exactly one row for {keys}, got {mask.sum()}"
    return board[mask].iloc[0]


# --------------------------------------------------------------------------- per forecast


def test_brier_and_log_score_hand_values():
    assert brier(0.7, 1.0) == pytest.approx(0.09)
    assert brier(0.7, 0.0) == pytest.approx(0.49)
    assert log_score(0.7, 1.0) == pytest.approx(LN_0_7)
    assert log_score(0.7, 0.0) == pytest.approx(LN_0_3)
    assert log_score(0.5, 0.0) == pytest.approx(LN_0_5)


def test_scores_are_vectorised_and_keep_a_series_index():
    got = brier(np.array([0.7, 0.2, 0.5]), np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(got, [0.09, 0.04, 0.25])
    series = log_score(
        pd.Series([0.7, 0.8], index=["x", "y"]), pd.Series([1.0, 0.0], index=["x", "y"])
    )
    assert list(series.index) == ["x", "y"]
    np.testing.assert_allclose(series.to_numpy(), [LN_0_7, LN_0_2])


def test_log_score_is_finite_at_certainty_thanks_to_clipping():
    got = log_score(np.array([0.0, 1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0, 0.0]))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, [LN_EPS, LN_EPS, LN_1_MINUS_EPS, LN_1_MINUS_EPS])
    np.testing.assert_allclose(brier(np.array([0.0, 1.0]), np.array([1.0, 1.0])), [1.0, 0.0])


def test_nan_price_gives_nan_score():
    assert math.isnan(brier(np.nan, 1.0))
    assert math.isnan(log_score(np.nan, 0.0))


@pytest.mark.parametrize(("p", "o"), [(1.2, 1.0), (-0.1, 0.0), (0.5, 0.5), (0.5, 2.0)])
def test_out_of_range_inputs_are_rejected(p, o):
    with pytest.raises(ValueError):
        brier(p, o)
    with pytest.raises(ValueError):
        log_score(p, o)


@pytest.mark.parametrize(
    ("days", "label"),
    [
        (0, "0-7d"),
        (7, "0-7d"),
        (7.5, "8-30d"),
        (8, "8-30d"),
        (30, "8-30d"),
        (31, "31-90d"),
        (90, "31-90d"),
        (91, ">90d"),
        (400, ">90d"),
        (-1, None),
        (float("nan"), None),
    ],
)
def test_horizon_bucket(days, label):
    assert horizon_bucket(days) == label


def test_horizon_bucket_on_a_series():
    got = horizon_bucket(pd.Series([3, 45, 10], index=[7, 8, 9]))
    assert list(got.index) == [7, 8, 9]
    assert got.tolist() == ["0-7d", "31-90d", "8-30d"]


# --------------------------------------------------------------------------- score_predictions


def test_score_predictions_per_row():
    scored = score_predictions(frame(THREE))
    np.testing.assert_allclose(scored["brier"], [0.04, 0.09, 0.25])
    np.testing.assert_allclose(scored["log_score"], [LN_0_8, LN_0_7, LN_0_5])
    np.testing.assert_allclose(scored["market_brier"], [0.16, 0.04, 0.16])
    np.testing.assert_allclose(scored["market_log_score"], [LN_0_6, LN_0_8, LN_0_6])
    assert scored["prediction_id"].tolist() == [1, 2, 3]
    assert "horizon_bucket" not in scored.columns


def test_score_predictions_missing_market_price_gives_nan_market_scores():
    scored = score_predictions(frame([(1, "A", "m1", "x", 0.7, np.nan, 1.0)]))
    assert scored["brier"].iloc[0] == pytest.approx(0.09)
    assert math.isnan(scored["market_brier"].iloc[0])
    assert math.isnan(scored["market_log_score"].iloc[0])


def test_score_predictions_adds_horizon_bucket():
    scored = score_predictions(frame(THREE).assign(horizon_days=[3, 45, 10]))
    assert scored["horizon_bucket"].tolist() == ["0-7d", "31-90d", "8-30d"]


def test_score_predictions_certain_forecasts_score_finitely():
    scored = score_predictions(
        frame([(1, "A", "m1", "x", 0.0, 1.0, 1.0), (2, "A", "m2", "x", 1.0, 0.0, 1.0)])
    )
    np.testing.assert_allclose(scored["brier"], [1.0, 0.0])
    np.testing.assert_allclose(scored["log_score"], [LN_EPS, LN_1_MINUS_EPS])
    np.testing.assert_allclose(scored["market_log_score"], [LN_1_MINUS_EPS, LN_EPS])


def test_score_predictions_empty():
    scored = score_predictions(frame([]))
    assert scored.empty
    for column in ("brier", "log_score", "market_brier", "market_log_score"):
        assert column in scored.columns


def test_score_predictions_rejects_bad_input():
    with pytest.raises(ValueError, match="missing columns"):
        score_predictions(frame(THREE).drop(columns=["market_price"]))
    with pytest.raises(ValueError, match="outcome"):
        score_predictions(frame([(1, "A", "m1", "x", 0.5, 0.5, np.nan)]))
    with pytest.raises(ValueError):
        score_predictions(frame([(1, "A", "m1", "x", 1.5, 0.5, 1.0)]))


# --------------------------------------------------------------------------- calibration

# p:  0.05 | 0.15 0.12 | 0.3 | 0.95 1.0
# o:  0    | 0    1    | 1   | 1    1
# bin 0: n 1, mean 0.05,  freq 0.0, gap 0.05
# bin 1: n 2, mean 0.135, freq 0.5, gap 0.365
# bin 3: n 1, mean 0.3,   freq 1.0, gap 0.7   (0.3 starts bin 3, not the end of bin 2)
# bin 9: n 2, mean 0.975, freq 1.0, gap 0.025 (p == 1.0 lands in the last bin)
# ECE = (1*0.05 + 2*0.365 + 1*0.7 + 2*0.025) / 6 = 1.53 / 6 = 0.255
CAL_P = [0.05, 0.15, 0.12, 0.3, 0.95, 1.0]
CAL_O = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_calibration_bins_hand_example():
    table = calibration_bins(CAL_P, CAL_O)
    assert list(table.columns) == list(CALIBRATION_COLUMNS)
    assert table["bin"].tolist() == list(range(10))
    np.testing.assert_allclose(table["lower"], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(table["upper"], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert table["n"].tolist() == [1, 2, 0, 1, 0, 0, 0, 0, 0, 2]
    filled = table.set_index("bin").loc[[0, 1, 3, 9]]
    np.testing.assert_allclose(filled["mean_predicted"], [0.05, 0.135, 0.3, 0.975])
    np.testing.assert_allclose(filled["observed_frequency"], [0.0, 0.5, 1.0, 1.0])
    empty = table[table["n"] == 0]
    assert empty["mean_predicted"].isna().all()
    assert empty["observed_frequency"].isna().all()


def test_expected_calibration_error_hand_example():
    assert expected_calibration_error(CAL_P, CAL_O) == pytest.approx(0.255)


def test_perfectly_calibrated_set_has_zero_ece():
    # bin 2: p 0.25 x4, one YES -> mean 0.25, freq 0.25
    assert expected_calibration_error([0.25] * 4, [1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.0)


def test_calibration_ignores_nan_pairs_and_other_bin_counts():
    table = calibration_bins([0.2, np.nan, 0.7], [1.0, 1.0, np.nan], bins=2)
    assert table["n"].tolist() == [1, 0]
    np.testing.assert_allclose(table["upper"], [0.5, 1.0])
    assert expected_calibration_error([0.2, np.nan], [1.0, 0.0], bins=2) == pytest.approx(0.8)


def test_calibration_empty_and_single():
    table = calibration_bins([], [])
    assert len(table) == 10
    assert table["n"].sum() == 0
    assert math.isnan(expected_calibration_error([], []))
    assert expected_calibration_error([0.7], [1.0]) == pytest.approx(0.3)


def test_calibration_rejects_bad_bins_and_lengths():
    with pytest.raises(ValueError):
        calibration_bins([0.5], [1.0], bins=0)
    with pytest.raises(ValueError):
        calibration_bins([0.5, 0.6], [1.0])


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_three_predictions():
    board = leaderboard(score_predictions(frame(THREE)))
    assert list(board.columns) == ["model", *LEADERBOARD_METRICS]
    # sorted by mean Brier: A 0.065 < market 0.12 < B 0.25
    assert board["model"].tolist() == ["A", "market", "B"]

    a = row(board, model="A")
    assert (a["n"], a["n_market"]) == (2, 2)
    assert a["mean_brier"] == pytest.approx(0.065)  # (0.04 + 0.09) / 2
    assert a["mean_log_score"] == pytest.approx((LN_0_8 + LN_0_7) / 2)
    assert a["market_brier"] == pytest.approx(0.10)  # (0.16 + 0.04) / 2
    assert a["skill_vs_market"] == pytest.approx(0.35)  # 1 - 0.065 / 0.10
    assert a["ece"] == pytest.approx(0.25)  # (|0.8 - 1| + |0.3 - 0|) / 2

    b = row(board, model="B")
    assert (b["n"], b["n_market"]) == (1, 1)
    assert b["mean_brier"] == pytest.approx(0.25)
    assert b["market_brier"] == pytest.approx(0.16)
    assert b["skill_vs_market"] == pytest.approx(-0.5625)  # 1 - 0.25 / 0.16
    assert b["ece"] == pytest.approx(0.5)


def test_market_baseline_is_pooled_over_the_compared_prediction_rows():
    board = leaderboard(score_predictions(frame(THREE)))
    market = row(board, model="market")
    # one market row per priced prediction: (0.16 + 0.04 + 0.16) / 3 = 0.12.
    # Deduplicating on (market_id, market_price) would give (0.16 + 0.04) / 2 = 0.10 and n 2.
    assert (market["n"], market["n_market"]) == (3, 3)
    assert market["mean_brier"] == pytest.approx(0.12)
    assert market["market_brier"] == pytest.approx(0.12)
    assert market["mean_log_score"] == pytest.approx((2 * LN_0_6 + LN_0_8) / 3)
    assert market["skill_vs_market"] == pytest.approx(0.0)
    # prices 0.6, 0.6 (both YES) and 0.2 (NO): (2 * 0.4 + 1 * 0.2) / 3
    assert market["ece"] == pytest.approx(1 / 3)


def test_skill_uses_only_rows_with_a_market_price():
    rows = [*THREE, (4, "A", "m3", "politics", 0.9, np.nan, 1.0)]  # brier 0.01, no price
    board = leaderboard(score_predictions(frame(rows)))
    a = row(board, model="A")
    assert (a["n"], a["n_market"]) == (3, 2)
    assert a["mean_brier"] == pytest.approx(0.14 / 3)  # (0.04 + 0.09 + 0.01) / 3
    assert a["market_brier"] == pytest.approx(0.10)
    # matched rows only: 1 - 0.065 / 0.10, not 1 - (0.14 / 3) / 0.10
    assert a["skill_vs_market"] == pytest.approx(0.35)
    market = row(board, model="market")
    assert market["n"] == 3
    assert market["mean_brier"] == pytest.approx(0.12)


def test_leaderboard_by_category():
    board = leaderboard(score_predictions(frame(THREE)), by=["model", "category"])
    assert list(board.columns) == ["model", "category", *LEADERBOARD_METRICS]
    assert list(zip(board["category"], board["model"], strict=True)) == [
        ("politics", "A"),  # 0.04
        ("politics", "market"),  # 0.16
        ("politics", "B"),  # 0.25
        ("sports", "market"),  # 0.04
        ("sports", "A"),  # 0.09
    ]
    assert row(board, model="A", category="politics")["skill_vs_market"] == pytest.approx(0.75)
    assert row(board, model="A", category="sports")["skill_vs_market"] == pytest.approx(-1.25)
    assert row(board, model="market", category="politics")["n"] == 2
    assert row(board, model="market", category="sports")["mean_brier"] == pytest.approx(0.04)


def test_leaderboard_by_horizon_bucket_in_horizon_order():
    scored = score_predictions(frame(THREE).assign(horizon_days=[3, 45, 10]))
    board = leaderboard(scored, by=["model", "horizon_bucket"])
    # "8-30d" before "31-90d" although it sorts after it alphabetically
    assert list(zip(board["horizon_bucket"], board["model"], strict=True)) == [
        ("0-7d", "A"),
        ("0-7d", "market"),
        ("8-30d", "market"),
        ("8-30d", "B"),
        ("31-90d", "market"),
        ("31-90d", "A"),
    ]
    # derived from horizon_days when the bucket column is absent
    derived = leaderboard(scored.drop(columns=["horizon_bucket"]), by=["model", "horizon_bucket"])
    pd.testing.assert_frame_equal(board, derived)


def test_leaderboard_one_prediction():
    board = leaderboard(score_predictions(frame([(1, "A", "m1", "x", 0.7, 0.5, 1.0)])))
    assert board["model"].tolist() == ["A", "market"]
    a, market = board.iloc[0], board.iloc[1]
    assert a["n"] == 1
    assert a["mean_brier"] == pytest.approx(0.09)
    assert a["mean_log_score"] == pytest.approx(LN_0_7)
    assert a["market_brier"] == pytest.approx(0.25)
    assert a["skill_vs_market"] == pytest.approx(0.64)  # 1 - 0.09 / 0.25
    assert a["ece"] == pytest.approx(0.3)
    assert market["mean_brier"] == pytest.approx(0.25)
    assert market["ece"] == pytest.approx(0.5)


def test_leaderboard_no_rows():
    board = leaderboard(score_predictions(frame([])))
    assert board.empty
    assert list(board.columns) == ["model", *LEADERBOARD_METRICS]
    by_category = leaderboard(score_predictions(frame([])), by=["model", "category"])
    assert list(by_category.columns) == ["model", "category", *LEADERBOARD_METRICS]


def test_leaderboard_all_same_outcome_and_a_perfect_market():
    rows = [(1, "A", "m1", "x", 0.9, 1.0, 1.0), (2, "A", "m2", "x", 0.6, 1.0, 1.0)]
    board = leaderboard(score_predictions(frame(rows)))
    assert board["model"].tolist() == ["market", "A"]
    a = row(board, model="A")
    assert a["mean_brier"] == pytest.approx(0.085)  # (0.01 + 0.16) / 2
    assert a["market_brier"] == pytest.approx(0.0)
    assert math.isnan(a["skill_vs_market"])  # a market Brier of 0 cannot be beaten
    assert a["ece"] == pytest.approx(0.25)  # (0.1 + 0.4) / 2
    market = row(board, model="market")
    assert market["mean_log_score"] == pytest.approx(LN_1_MINUS_EPS)
    assert math.isnan(market["skill_vs_market"])


def test_leaderboard_without_any_market_price():
    rows = [(1, "A", "m1", "x", 0.7, np.nan, 1.0)]
    board = leaderboard(score_predictions(frame(rows)))
    assert board["model"].tolist() == ["A"]
    assert board["n_market"].tolist() == [0]
    assert math.isnan(board["market_brier"].iloc[0])
    assert math.isnan(board["skill_vs_market"].iloc[0])


def test_leaderboard_rejects_reserved_name_and_missing_model_key():
    scored = score_predictions(frame([(1, "market", "m1", "x", 0.7, 0.5, 1.0)]))
    with pytest.raises(ValueError, match="reserved"):
        leaderboard(scored)
    with pytest.raises(ValueError, match="model"):
        leaderboard(score_predictions(frame(THREE)), by=["category"])


# --------------------------------------------------------------------------- chart


def test_calibration_chart_writes_a_png(tmp_path):
    scored = score_predictions(frame(THREE))
    tables = {
        "A": calibration_bins(scored["probability"], scored["outcome"]),
        "market": calibration_bins(scored["market_price"], scored["outcome"]),
    }
    target = tmp_path / "charts" / "reliability.png"
    got = calibration_chart(tables, target)
    assert got == target
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
