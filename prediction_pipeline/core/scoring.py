"""Proper scoring of resolved forecasts, model against model and against the market.

Everything here is set-wise: a frame in, a frame out, no loop over rows.

Conventions
-----------
* ``p`` is a probability of YES in [0, 1]; ``o`` is the outcome, 1.0 for YES and 0.0 for NO.
  Void markets (resolved to neither side) have no outcome and must be left out by the caller.
* Brier score, per forecast: ``(p - o) ** 2``. In [0, 1]; **lower is better**. The Brier score of
  a set of forecasts is the mean of the per-forecast scores.
* Log score, per forecast: ``o * ln(p) + (1 - o) * ln(1 - p)``, the natural log of the
  probability given to what happened, with ``p`` clipped to [1e-4, 1 - 1e-4] so that a
  confident miss costs ``ln(1e-4) ~= -9.21`` instead of minus infinity. Always <= 0;
  **higher (closer to 0) is better**. This is the positively oriented convention, not the
  negative log-likelihood "log loss".
* The market baseline: the market's YES price at prediction time, scored exactly like a
  forecast. Skill against the market = ``1 - Brier(model) / Brier(market)``: above 0 the model
  beat the price, 0 it matched it, below 0 it did worse. Each model is compared with the
  price on exactly the predictions it made, and "beats the market" needs the 95% cluster
  bootstrap interval of the skill (markets resampled, not predictions) to exclude zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LOG_SCORE_EPS = 1e-4
DEFAULT_BINS = 10


#: Horizon buckets (days from prediction to the market's end), in order.
HORIZON_BUCKETS: tuple[str, ...] = ("0-7d", "8-30d", "31-90d", ">90d")
_HORIZON_EDGES = (0.0, 7.0, 30.0, 90.0, np.inf)

PREDICTION_COLUMNS: tuple[str, ...] = (
    "prediction_id",
    "model",
    "market_id",
    "category",
    "probability",
    "market_price",
    "outcome",
)
SCORE_COLUMNS: tuple[str, ...] = ("brier", "log_score", "market_brier", "market_log_score")
CALIBRATION_COLUMNS: tuple[str, ...] = (
    "bin",
    "lower",
    "upper",
    "n",
    "mean_predicted",
    "observed_frequency",
)
# --------------------------------------------------------------------------- per forecast


def _as_float(x):
    """A float Series stays a Series (index kept); anything else becomes a float ndarray."""
    if isinstance(x, pd.Series):
        return x.astype("float64")
    return np.asarray(x, dtype="float64")


def _check_probabilities(p, name: str) -> None:
    values = np.asarray(p, dtype="float64")
    bad = ~np.isnan(values) & ((values < 0.0) | (values > 1.0))
    if bad.any():
        raise ValueError(f"{name} must lie in [0, 1]; got {values[bad][:5].tolist()}")


def _check_outcomes(o, name: str = "outcome") -> None:
    values = np.asarray(o, dtype="float64")
    bad = ~np.isnan(values) & (values != 0.0) & (values != 1.0)
    if bad.any():
        raise ValueError(f"{name} must be 1.0 (YES) or 0.0 (NO); got {values[bad][:5].tolist()}")


def brier(p, o):
    """Per-forecast Brier score ``(p - o) ** 2``; lower is better.

    Vectorised: scalars give a float, arrays an ndarray, a Series a Series (same index).
    NaN in either input gives NaN (e.g. a missing market price).
    """
    p, o = _as_float(p), _as_float(o)
    _check_probabilities(p, "p")
    _check_outcomes(o)
    return np.square(p - o)


def log_score(p, o):
    """Per-forecast log score ``o*ln(p) + (1-o)*ln(1-p)`` with p clipped to [1e-4, 1-1e-4].

    The natural log of the probability given to what happened: <= 0, higher is better, and
    finite even for p = 0 or p = 1 (worst case ``ln(1e-4)``). Vectorised like `brier`.
    """
    p, o = _as_float(p), _as_float(o)
    _check_probabilities(p, "p")
    _check_outcomes(o)
    q = np.clip(p, LOG_SCORE_EPS, 1.0 - LOG_SCORE_EPS)
    return o * np.log(q) + (1.0 - o) * np.log1p(-q)


def horizon_bucket(days):
    """Label a forecast horizon in days: "0-7d", "8-30d", "31-90d" or ">90d".

    Buckets are closed on the right: 7 -> "0-7d", 7.5 -> "8-30d", 90 -> "31-90d".
    Negative or missing horizons get no label (None for a scalar, NaN in a Series).
    A scalar gives a str (or None); anything array-like gives a Series of labels.
    """
    scalar = np.ndim(days) == 0
    values = pd.Series(np.atleast_1d(np.asarray(days, dtype="float64")))
    if isinstance(days, pd.Series):
        values.index = days.index
    labels = pd.cut(
        values,
        bins=list(_HORIZON_EDGES),
        labels=list(HORIZON_BUCKETS),
        right=True,
        include_lowest=True,
    ).astype(object)
    if scalar:
        label = labels.iloc[0]
        return None if pd.isna(label) else str(label)
    return labels


# --------------------------------------------------------------------------- scoring a set


def score_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """Score each resolved prediction, and the market price it faced, the same way.

    Input columns: ``prediction_id, model, market_id, category, probability, market_price,
    outcome`` (outcome 1.0 YES / 0.0 NO; market_price may be NaN) and optionally
    ``horizon_days``. Other columns are carried through.

    Output: the input columns plus ``brier, log_score, market_brier, market_log_score`` and,
    when ``horizon_days`` is given, ``horizon_bucket``. A missing market price gives NaN market
    scores, and such rows are left out of skill against the market.

    Raises ValueError on missing columns, a missing or out-of-range probability, a missing
    outcome (void markets have none: filter them out first) or an outcome other than 0/1.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"score_predictions: missing columns {missing}")
    out = df.copy()
    probability = out["probability"].astype("float64")
    outcome = out["outcome"].astype("float64")
    market_price = out["market_price"].astype("float64")
    if probability.isna().any():
        raise ValueError("score_predictions: probability must not be missing")
    if outcome.isna().any():
        raise ValueError("score_predictions: outcome must not be missing (drop void markets)")
    out["probability"], out["outcome"], out["market_price"] = probability, outcome, market_price
    out["brier"] = brier(probability, outcome)
    out["log_score"] = log_score(probability, outcome)
    out["market_brier"] = brier(market_price, outcome)
    out["market_log_score"] = log_score(market_price, outcome)
    if "horizon_days" in out.columns:
        out["horizon_bucket"] = horizon_bucket(out["horizon_days"])
    return out


# --------------------------------------------------------------------------- calibration


def bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1], closed on the left; p == 1.0 goes to the last bin.

    ``floor(p * bins)`` rather than searching ``linspace`` edges, so that a decimal edge
    such as 0.3 falls in the bin that starts at 0.3 (``linspace(0, 1, 11)[3]`` is
    0.30000000000000004, which would put 0.3 one bin too low).
    """
    return np.minimum(np.floor(p * bins), bins - 1).astype("int64")


def check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def _clean_pairs(p, o) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype="float64").ravel()
    o = np.asarray(o, dtype="float64").ravel()
    if p.shape != o.shape:
        raise ValueError(f"p and o differ in length: {p.shape[0]} != {o.shape[0]}")
    _check_probabilities(p, "p")
    _check_outcomes(o)
    keep = ~(np.isnan(p) | np.isnan(o))
    return p[keep], o[keep]


def calibration_bins(p, o, bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """Reliability table: one row per equal-width bin on [0, 1], empty bins included.

    Columns: ``bin`` (0-based), ``lower``, ``upper``, ``n``, ``mean_predicted`` (mean p in the
    bin) and ``observed_frequency`` (share of YES in the bin); the last two are NaN for an
    empty bin. Bins are [lower, upper), except the last which also holds p == 1.0.
    Pairs where p or o is NaN are ignored.
    """
    bins = check_bins(bins)
    p, o = _clean_pairs(p, o)
    idx = bin_index(p, bins)
    n = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_o = np.bincount(idx, weights=o, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(n > 0, sum_p / n, np.nan)
        freq = np.where(n > 0, sum_o / n, np.nan)
    edges = np.arange(bins + 1, dtype="float64") / bins
    return pd.DataFrame(
        {
            "bin": np.arange(bins, dtype="int64"),
            "lower": edges[:-1],
            "upper": edges[1:],
            "n": n.astype("int64"),
            "mean_predicted": mean_p,
            "observed_frequency": freq,
        }
    )


def expected_calibration_error(p, o, bins: int = DEFAULT_BINS) -> float:
    """ECE = sum over bins of ``n_b / N * |mean_p_b - freq_b|``; NaN when there are no pairs."""
    table = calibration_bins(p, o, bins)
    total = int(table["n"].sum())
    if total == 0:
        return float("nan")
    filled = table[table["n"] > 0]
    gaps = (filled["mean_predicted"] - filled["observed_frequency"]).abs()
    return float((filled["n"] / total * gaps).sum())
