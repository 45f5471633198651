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
  beat the price, 0 it matched it, below 0 it did worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

LOG_SCORE_EPS = 1e-4
DEFAULT_BINS = 10

#: The `model` label of the market-price baseline rows of the leaderboard (reserved).
MARKET_MODEL = "market"

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
LEADERBOARD_METRICS: tuple[str, ...] = (
    "n",
    "n_market",
    "mean_brier",
    "mean_log_score",
    "market_brier",
    "market_log_score",
    "skill_vs_market",
    "ece",
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


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1], closed on the left; p == 1.0 goes to the last bin.

    ``floor(p * bins)`` rather than searching ``linspace`` edges, so that a decimal edge
    such as 0.3 falls in the bin that starts at 0.3 (``linspace(0, 1, 11)[3]`` is
    0.30000000000000004, which would put 0.3 one bin too low).
    """
    return np.minimum(np.floor(p * bins), bins - 1).astype("int64")


def _check_bins(bins: int) -> int:
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
    bins = _check_bins(bins)
    p, o = _clean_pairs(p, o)
    idx = _bin_index(p, bins)
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


def _ece_by_group(group_id: np.ndarray, p: np.ndarray, o: np.ndarray, bins: int) -> pd.Series:
    """ECE per group id, set-wise: n_b/N * |mean_p_b - freq_b| == |sum_p_b - sum_o_b| / N."""
    frame = pd.DataFrame({"g": group_id, "b": _bin_index(p, bins), "p": p, "o": o})
    per_bin = frame.groupby(["g", "b"]).agg(n=("p", "size"), sp=("p", "sum"), so=("o", "sum"))
    gap = (per_bin["sp"] - per_bin["so"]).abs().groupby(level="g").sum()
    return gap / per_bin["n"].groupby(level="g").sum()


# --------------------------------------------------------------------------- leaderboard


def _empty_leaderboard(by: list[str]) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {k: pd.Series(dtype=object) for k in by}
    for metric in LEADERBOARD_METRICS:
        dtype = "int64" if metric in ("n", "n_market") else "float64"
        columns[metric] = pd.Series(dtype=dtype)
    return pd.DataFrame(columns)


def _aggregate(
    df: pd.DataFrame, by: list[str], p_col: str, brier_col: str, log_col: str, bins: int
) -> pd.DataFrame:
    """One leaderboard row per group of `by`, scoring the column `p_col` (+ its scores)."""
    group_id = df.groupby(by, dropna=False, sort=False).ngroup().to_numpy()
    has_price = df["market_price"].notna().to_numpy()
    work = pd.DataFrame(
        {
            "g": group_id,
            "brier": df[brier_col].to_numpy(),
            "log_score": df[log_col].to_numpy(),
            # the forecaster's Brier on the rows that have a market price: skill's numerator
            "matched_brier": np.where(has_price, df[brier_col].to_numpy(), np.nan),
            "market_brier": df["market_brier"].to_numpy(),
            "market_log_score": df["market_log_score"].to_numpy(),
            "has_price": has_price,
        }
    )
    agg = work.groupby("g").agg(
        n=("brier", "size"),
        n_market=("has_price", "sum"),
        mean_brier=("brier", "mean"),
        mean_log_score=("log_score", "mean"),
        market_brier=("market_brier", "mean"),
        market_log_score=("market_log_score", "mean"),
        matched_brier=("matched_brier", "mean"),
    )
    market = agg["market_brier"]
    agg["skill_vs_market"] = np.where(
        market.notna() & (market > 0), 1.0 - agg["matched_brier"] / market, np.nan
    )
    agg["ece"] = _ece_by_group(
        group_id, df[p_col].to_numpy(dtype="float64"), df["outcome"].to_numpy(dtype="float64"), bins
    )
    keys = df[by].assign(g=group_id).drop_duplicates("g").set_index("g")
    out = keys.join(agg, how="inner")
    out["n"] = out["n"].astype("int64")
    out["n_market"] = out["n_market"].astype("int64")
    return out.reset_index(drop=True)[[*by, *LEADERBOARD_METRICS]]


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "horizon_bucket":
        order = {label: i for i, label in enumerate(HORIZON_BUCKETS)}
        return column.map(order)
    return column


def leaderboard(
    scored: pd.DataFrame, by: Sequence[str] = ("model",), bins: int = DEFAULT_BINS
) -> pd.DataFrame:
    """Per-group accuracy of the models and of the market price they faced.

    `scored` is the output of `score_predictions`. `by` must include "model", e.g. ["model"],
    ["model", "category"] or ["model", "horizon_bucket"] (derived from horizon_days if needed).

    Columns: the `by` keys, then
      n                  predictions in the group;
      n_market           of those, predictions with a market price;
      mean_brier, mean_log_score   over all n predictions;
      market_brier, market_log_score   the market price scored on the n_market rows;
      skill_vs_market    1 - (model Brier on the n_market rows) / market_brier; NaN when
                         n_market == 0 or market_brier == 0 (a perfect market cannot be beaten);
      ece                expected calibration error of the probabilities, `bins` bins.

    Market baseline rows (model == "market"), one per group of the other `by` keys, are
    computed on every prediction row with a market price, one market row per prediction:
    the pooled baseline the models were compared against, weighted as they were. They are
    not deduplicated on (market_id, market_price): that would weight markets differently from
    the model rows and merge distinct moments that happened to share a price. For these rows
    skill_vs_market is 0 by construction (or NaN). No market row when no price is known.

    Sorted by the non-model keys (horizon buckets in horizon order), then mean_brier
    ascending, then model. An empty input gives an empty frame with these columns.
    """
    by = list(by)
    if "model" not in by:
        raise ValueError(f"leaderboard: `by` must include 'model', got {by}")
    if len(set(by)) != len(by):
        raise ValueError(f"leaderboard: duplicate keys in `by`: {by}")
    bins = _check_bins(bins)
    df = scored
    if (
        "horizon_bucket" in by
        and "horizon_bucket" not in df.columns
        and "horizon_days" in df.columns
    ):
        df = df.assign(horizon_bucket=horizon_bucket(df["horizon_days"]))
    needed = [*by, "probability", "outcome", "market_price", *SCORE_COLUMNS]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"leaderboard: missing columns {missing} (score_predictions first)")
    if df.empty:
        return _empty_leaderboard(by)
    if (df["model"] == MARKET_MODEL).any():
        raise ValueError(f"leaderboard: model name {MARKET_MODEL!r} is reserved for the baseline")

    parts = [_aggregate(df, by, "probability", "brier", "log_score", bins)]
    priced = df[df["market_price"].notna()]
    if not priced.empty:
        baseline = priced.assign(model=MARKET_MODEL)
        parts.append(
            _aggregate(baseline, by, "market_price", "market_brier", "market_log_score", bins)
        )
    board = pd.concat(parts, ignore_index=True)
    others = [k for k in by if k != "model"]
    board = board.sort_values(
        [*others, "mean_brier", "model"], key=_sort_key, kind="stable", na_position="last"
    )
    return board.reset_index(drop=True)


# --------------------------------------------------------------------------- chart


def calibration_chart(
    bins_by_model: dict[str, pd.DataFrame], path: str | Path, title: str = "Reliability"
) -> Path:
    """Draw a reliability diagram (one line per model, from `calibration_bins` tables) as PNG.

    Upper panel: observed frequency against mean predicted probability, with the diagonal of
    perfect calibration; empty bins are skipped. Lower panel: forecasts per bin.
    Rendered on an Agg canvas without pyplot (no display, no global state). Returns the path.
    """
    # Imported here: matplotlib takes ~0.4 s to load and only this chart needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.0, 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    reliability, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    reliability.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    n_models = max(len(bins_by_model), 1)
    for i, (model, table) in enumerate(bins_by_model.items()):
        filled = table[table["n"] > 0]
        reliability.plot(
            filled["mean_predicted"], filled["observed_frequency"], marker="o", label=model
        )
        bin_width = float((table["upper"] - table["lower"]).min()) if len(table) else 1.0
        bar_width = bin_width / n_models
        counts.bar(
            table["lower"] + bar_width * i,
            table["n"],
            width=bar_width,
            align="edge",
            label=model,
        )
    reliability.set_xlim(0, 1)
    reliability.set_ylim(0, 1)
    reliability.set_ylabel("observed frequency of YES")
    reliability.set_title(title)
    reliability.legend(loc="upper left", fontsize="small")
    counts.set_xlabel("predicted probability of YES")
    counts.set_ylabel("forecasts")
    fig.savefig(path, format="png", dpi=100)
    return path
