"""Scoring against hand-computed values (every expected number below is worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from prediction_pipeline.core.calibration_chart import calibration_chart
from prediction_pipeline.core.leaderboard import (
    LEADERBOARD_METRICS,
    calibration_from_sums,
    calibration_sums,
    cluster_bootstrap,
    leaderboard,
    leaderboard_from_sums,
    market_sums,
)
from prediction_pipeline.core.scoring import (
    CALIBRATION_COLUMNS,
    brier,
    calibration_bins,
    expected_calibration_error,
    horizon_bucket,
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
    # sorted by mean Brier: A 0.065 < B 0.25; no pooled "market" row
    assert board["model"].tolist() == ["A", "B"]

    a = row(board, model="A")
    assert (a["n"], a["n_markets"], a["n_priced"]) == (2, 2, 2)
    assert a["mean_brier"] == pytest.approx(0.065)  # (0.04 + 0.09) / 2
    assert a["mean_log_score"] == pytest.approx((LN_0_8 + LN_0_7) / 2)
    assert a["market_brier"] == pytest.approx(0.10)  # (0.16 + 0.04) / 2
    assert a["market_log_score"] == pytest.approx((LN_0_6 + LN_0_8) / 2)
    assert a["skill_vs_market"] == pytest.approx(0.35)  # 1 - 0.065 / 0.10
    assert a["ece"] == pytest.approx(0.25)  # (|0.8 - 1| + |0.3 - 0|) / 2
    assert a["too_small"] and not a["beats_market"]  # 2 markets prove nothing

    b = row(board, model="B")
    assert (b["n"], b["n_markets"], b["n_priced"]) == (1, 1, 1)
    assert b["mean_brier"] == pytest.approx(0.25)
    assert b["market_brier"] == pytest.approx(0.16)  # the price on B's own prediction only
    assert b["skill_vs_market"] == pytest.approx(-0.5625)  # 1 - 0.25 / 0.16
    assert b["ece"] == pytest.approx(0.5)
    # one market: every resample is that market, so the interval is the point
    assert b["brier_lo"] == b["brier_hi"] == pytest.approx(0.25)


def test_each_model_faces_the_market_on_its_own_predictions():
    """The market's Brier is computed on exactly the rows of the model, not pooled."""
    board = leaderboard(score_predictions(frame(THREE)))
    assert set(board["model"]) == {"A", "B"}  # no pooled "market" row
    # A predicted m1 (price 0.6) and m2 (price 0.2); B only m1: their market Briers differ.
    assert row(board, model="A")["market_brier"] == pytest.approx(0.10)
    assert row(board, model="B")["market_brier"] == pytest.approx(0.16)


def test_skill_uses_only_rows_with_a_market_price():
    rows = [*THREE, (4, "A", "m3", "politics", 0.9, np.nan, 1.0)]  # brier 0.01, no price
    board = leaderboard(score_predictions(frame(rows)))
    a = row(board, model="A")
    assert (a["n"], a["n_markets"], a["n_priced"]) == (3, 3, 2)
    assert a["mean_brier"] == pytest.approx(0.14 / 3)  # (0.04 + 0.09 + 0.01) / 3
    assert a["market_brier"] == pytest.approx(0.10)
    # matched rows only: 1 - 0.065 / 0.10, not 1 - (0.14 / 3) / 0.10
    assert a["skill_vs_market"] == pytest.approx(0.35)


def test_leaderboard_by_category():
    board = leaderboard(score_predictions(frame(THREE)), by=["model", "category"])
    assert list(board.columns) == ["model", "category", *LEADERBOARD_METRICS]
    assert list(zip(board["category"], board["model"], strict=True)) == [
        ("politics", "A"),  # 0.04
        ("politics", "B"),  # 0.25
        ("sports", "A"),  # 0.09
    ]
    assert row(board, model="A", category="politics")["skill_vs_market"] == pytest.approx(0.75)
    assert row(board, model="A", category="sports")["skill_vs_market"] == pytest.approx(-1.25)
    assert row(board, model="A", category="sports")["market_brier"] == pytest.approx(0.04)
    assert board["too_small"].all()


def test_leaderboard_by_horizon_bucket_in_horizon_order():
    scored = score_predictions(frame(THREE).assign(horizon_days=[3, 45, 10]))
    board = leaderboard(scored, by=["model", "horizon_bucket"])
    # "8-30d" before "31-90d" although it sorts after it alphabetically
    assert list(zip(board["horizon_bucket"], board["model"], strict=True)) == [
        ("0-7d", "A"),
        ("8-30d", "B"),
        ("31-90d", "A"),
    ]
    # derived from horizon_days when the bucket column is absent
    derived = leaderboard(scored.drop(columns=["horizon_bucket"]), by=["model", "horizon_bucket"])
    pd.testing.assert_frame_equal(board, derived)


def test_leaderboard_one_prediction():
    board = leaderboard(score_predictions(frame([(1, "A", "m1", "x", 0.7, 0.5, 1.0)])))
    assert board["model"].tolist() == ["A"]
    a = board.iloc[0]
    assert a["n"] == 1
    assert a["mean_brier"] == pytest.approx(0.09)
    assert a["mean_log_score"] == pytest.approx(LN_0_7)
    assert a["market_brier"] == pytest.approx(0.25)
    assert a["skill_vs_market"] == pytest.approx(0.64)  # 1 - 0.09 / 0.25
    assert a["ece"] == pytest.approx(0.3)


def test_leaderboard_no_rows():
    board = leaderboard(score_predictions(frame([])))
    assert board.empty
    assert list(board.columns) == ["model", *LEADERBOARD_METRICS]
    by_category = leaderboard(score_predictions(frame([])), by=["model", "category"])
    assert list(by_category.columns) == ["model", "category", *LEADERBOARD_METRICS]


def test_leaderboard_all_same_outcome_and_a_perfect_market():
    rows = [(1, "A", "m1", "x", 0.9, 1.0, 1.0), (2, "A", "m2", "x", 0.6, 1.0, 1.0)]
    board = leaderboard(score_predictions(frame(rows)))
    a = row(board, model="A")
    assert a["mean_brier"] == pytest.approx(0.085)  # (0.01 + 0.16) / 2
    assert a["market_brier"] == pytest.approx(0.0)
    assert a["market_log_score"] == pytest.approx(LN_1_MINUS_EPS)
    assert math.isnan(a["skill_vs_market"])  # a market Brier of 0 cannot be beaten
    assert math.isnan(a["skill_lo"]) and not a["beats_market"]
    assert a["ece"] == pytest.approx(0.25)  # (0.1 + 0.4) / 2


def test_leaderboard_without_any_market_price():
    rows = [(1, "A", "m1", "x", 0.7, np.nan, 1.0)]
    board = leaderboard(score_predictions(frame(rows)))
    assert board["model"].tolist() == ["A"]
    assert board["n_priced"].tolist() == [0]
    assert math.isnan(board["market_brier"].iloc[0])
    assert math.isnan(board["skill_vs_market"].iloc[0])


def test_leaderboard_rejects_a_missing_model_key():
    with pytest.raises(ValueError, match="model"):
        leaderboard(score_predictions(frame(THREE)), by=["category"])


# --------------------------------------------------------------------------- intervals


def hand_made(n_markets: int, days: int, model_edge: float, seed: int = 1) -> pd.DataFrame:
    """Markets priced at a calibrated price q (outcome ~ Bernoulli(q)), each predicted on
    `days` days by "same" (the price itself) and "better" (q moved on average `model_edge`
    of the way toward the outcome, more on some markets than others: it knows something the
    market does not)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.1, 0.9, n_markets)
    o = (rng.random(n_markets) < q).astype(float)
    edge = model_edge * rng.uniform(0.0, 2.0, n_markets)
    rows, pid = [], 0
    for m in range(n_markets):
        for _ in range(days):
            better = q[m] + edge[m] * (o[m] - q[m])
            for model, p in (("same", q[m]), ("better", better)):
                pid += 1
                rows.append((pid, model, f"m{m}", "x", p, q[m], o[m]))
    return score_predictions(frame(rows))


def test_a_model_equal_to_the_market_has_a_skill_interval_containing_zero():
    board = leaderboard(hand_made(200, 1, model_edge=0.3)).set_index("model")
    same = board.loc["same"]
    assert same["skill_vs_market"] == pytest.approx(0.0)
    assert same["skill_lo"] <= 0.0 <= same["skill_hi"]
    assert not same["beats_market"]


def test_a_clearly_better_model_has_a_skill_interval_above_zero():
    board = leaderboard(hand_made(200, 1, model_edge=0.3)).set_index("model")
    better = board.loc["better"]
    # about 1 - E[(1 - edge)^2] = 1 - 0.52 with edge ~ U(0, 0.6): the model's error is the
    # market's error shrunk by (1 - edge)
    assert 0.35 < better["skill_vs_market"] < 0.6
    assert 0.0 < better["skill_lo"] < better["skill_vs_market"] < better["skill_hi"]
    assert better["beats_market"] and not better["too_small"]
    assert better["brier_lo"] < better["mean_brier"] < better["brier_hi"]
    assert better["log_score_lo"] < better["mean_log_score"] < better["log_score_hi"]


def test_a_noisy_model_on_few_markets_does_not_beat_the_market():
    rng = np.random.default_rng(5)
    scored = hand_made(40, 1, model_edge=0.0)
    noisy = scored["model"] == "better"
    p = np.clip(scored.loc[noisy, "probability"] + rng.normal(0, 0.05, noisy.sum()), 0, 1)
    scored.loc[noisy, "probability"] = p
    board = leaderboard(score_predictions(scored[list(scored.columns[:7])])).set_index("model")
    assert board.loc["better", "skill_lo"] < 0.0 < board.loc["better", "skill_hi"]
    assert not board.loc["better", "beats_market"]


def test_the_bootstrap_is_seeded():
    scored = hand_made(60, 1, model_edge=0.1)
    first = leaderboard(scored, seed=3)
    pd.testing.assert_frame_equal(first, leaderboard(scored, seed=3))
    other = leaderboard(scored, seed=4)
    assert not np.allclose(first["skill_lo"], other["skill_lo"])


def test_the_bootstrap_resamples_markets_not_predictions():
    """Predicting every market on 30 days instead of one adds no independent evidence: the
    interval must stay as wide. A bootstrap over predictions would shrink it ~sqrt(30)."""
    once = leaderboard(hand_made(60, 1, model_edge=0.1)).set_index("model")
    daily = leaderboard(hand_made(60, 30, model_edge=0.1)).set_index("model")
    assert daily.loc["better", "n"] == 30 * once.loc["better", "n"]
    assert daily.loc["better", "n_markets"] == once.loc["better", "n_markets"] == 60
    for low, high in (("skill_lo", "skill_hi"), ("brier_lo", "brier_hi")):
        width_once = once.loc["better", high] - once.loc["better", low]
        width_daily = daily.loc["better", high] - daily.loc["better", low]
        assert width_daily == pytest.approx(width_once)


def test_cluster_bootstrap_draws_whole_markets():
    per_market = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    totals = cluster_bootstrap(per_market, 50, np.random.default_rng(0))
    # every resample is 3 whole markets: the columns keep their 1:10 ratio and sum to 3 draws
    assert np.allclose(totals[:, 1], 10 * totals[:, 0])
    assert set(np.round(totals[:, 0]).astype(int)) <= set(range(3, 10))


def test_buckets_under_the_minimum_are_marked_too_small():
    scored = hand_made(200, 1, model_edge=0.3)
    scored["category"] = np.where(scored["market_id"].isin(["m0", "m1", "m2"]), "rare", "common")
    board = leaderboard(scored, by=["model", "category"])
    rare = board[board["category"] == "rare"]
    assert rare["too_small"].all() and not rare["beats_market"].any()
    assert not board[board["category"] == "common"]["too_small"].any()


def test_leaderboard_from_sql_style_sums_matches_the_frame_path():
    """The store hands over per-market sums; the result must equal the per-row path."""
    scored = hand_made(30, 3, model_edge=0.2)
    board = leaderboard(scored)
    sums = market_sums(scored)
    calibration = calibration_sums(scored)
    pd.testing.assert_frame_equal(board, leaderboard_from_sums(sums, ["model"], calibration))
    for model, table in calibration.groupby("model"):
        part = scored[scored["model"] == model]
        expected = calibration_bins(part["probability"], part["outcome"])
        pd.testing.assert_frame_equal(calibration_from_sums(table), expected)


# --------------------------------------------------------------------------- chart


def test_calibration_chart_is_a_png_in_memory():
    scored = score_predictions(frame(THREE))
    tables = {
        "A": calibration_bins(scored["probability"], scored["outcome"]),
        "B": calibration_bins(scored["market_price"], scored["outcome"]),
    }
    data = calibration_chart(tables)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
