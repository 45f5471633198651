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

import io
import zlib
from collections.abc import Iterable, Sequence

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
LEADERBOARD_METRICS: tuple[str, ...] = (
    "n",
    "n_markets",
    "n_priced",
    "mean_brier",
    "brier_lo",
    "brier_hi",
    "mean_log_score",
    "log_score_lo",
    "log_score_hi",
    "market_brier",
    "market_log_score",
    "skill_vs_market",
    "skill_lo",
    "skill_hi",
    "too_small",
    "beats_market",
    "ece",
)
_METRIC_DTYPES = {
    "n": "int64",
    "n_markets": "int64",
    "n_priced": "int64",
    "too_small": "bool",
    "beats_market": "bool",
}
#: Per (model, market) sums: the leaderboard's input, and the unit the bootstrap resamples.
SUM_COLUMNS: tuple[str, ...] = (
    "n",
    "n_priced",
    "sum_brier",
    "sum_log_score",
    "sum_brier_priced",  # the model's Brier on the rows with a market price
    "sum_market_brier",
    "sum_market_log_score",
)
#: A bucket judged on fewer markets than this is marked too small to read.
MIN_MARKETS = 10
DEFAULT_BOOTSTRAP = 2_000


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


# --------------------------------------------------------------------------- leaderboard


def market_sums(scored: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Per (`by` keys, market) sums of the scores: the unit the bootstrap resamples.

    `scored` is the output of `score_predictions`. The store computes the same frame with
    SQL (`store.scoring.leaderboard_market_sums`), so that memory grows with the number of
    markets, not predictions. Columns: the `by` keys, ``market_id`` and `SUM_COLUMNS`.
    """
    by = _check_by(by)
    df = _with_horizon_bucket(scored, by)
    missing = [c for c in [*by, "market_id", *SCORE_COLUMNS] if c not in df.columns]
    if missing:
        raise ValueError(f"market_sums: missing columns {missing} (score_predictions first)")
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in [*by, "market_id"]}).assign(
            **{c: pd.Series(dtype="float64") for c in SUM_COLUMNS}
        )
    priced = df["market_price"].notna()
    work = df[[*by, "market_id"]].assign(
        n=1.0,
        n_priced=priced.astype("float64"),
        sum_brier=df["brier"].astype("float64"),
        sum_log_score=df["log_score"].astype("float64"),
        sum_brier_priced=df["brier"].where(priced, 0.0).astype("float64"),
        sum_market_brier=df["market_brier"].fillna(0.0).astype("float64"),
        sum_market_log_score=df["market_log_score"].fillna(0.0).astype("float64"),
    )
    keys = [*by, "market_id"]
    return work.groupby(keys, dropna=False, sort=False)[list(SUM_COLUMNS)].sum().reset_index()


def calibration_sums(
    scored: pd.DataFrame, by: Sequence[str] = ("model",), bins: int = DEFAULT_BINS
) -> pd.DataFrame:
    """Per (`by` keys, bin) counts and sums: ``n, sum_p, sum_o`` (ECE and reliability curves)."""
    by = _check_by(by)
    bins = _check_bins(bins)
    df = _with_horizon_bucket(scored, by)
    work = df[by].assign(
        bin=_bin_index(df["probability"].to_numpy(dtype="float64"), bins),
        n=1,
        sum_p=df["probability"].astype("float64"),
        sum_o=df["outcome"].astype("float64"),
    )
    grouped = work.groupby([*by, "bin"], dropna=False, sort=False)
    return grouped[["n", "sum_p", "sum_o"]].sum().reset_index()


def calibration_from_sums(sums: pd.DataFrame, bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """A `calibration_bins` table from one model's ``bin, n, sum_p, sum_o`` rows."""
    bins = _check_bins(bins)
    per_bin = sums.groupby("bin")[["n", "sum_p", "sum_o"]].sum()
    per_bin = per_bin.reindex(range(bins), fill_value=0)
    n = per_bin["n"].to_numpy(dtype="int64")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(n > 0, per_bin["sum_p"] / n, np.nan)
        freq = np.where(n > 0, per_bin["sum_o"] / n, np.nan)
    edges = np.arange(bins + 1, dtype="float64") / bins
    return pd.DataFrame(
        {
            "bin": np.arange(bins, dtype="int64"),
            "lower": edges[:-1],
            "upper": edges[1:],
            "n": n,
            "mean_predicted": mean_p,
            "observed_frequency": freq,
        }
    )


def _check_by(by: Sequence[str]) -> list[str]:
    by = list(by)
    if "model" not in by:
        raise ValueError(f"leaderboard: `by` must include 'model', got {by}")
    if len(set(by)) != len(by):
        raise ValueError(f"leaderboard: duplicate keys in `by`: {by}")
    return by


def _with_horizon_bucket(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    if (
        "horizon_bucket" in by
        and "horizon_bucket" not in df.columns
        and "horizon_days" in df.columns
    ):
        return df.assign(horizon_bucket=horizon_bucket(df["horizon_days"]))
    return df


def _empty_leaderboard(by: list[str]) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {k: pd.Series(dtype=object) for k in by}
    for metric in LEADERBOARD_METRICS:
        columns[metric] = pd.Series(dtype=_METRIC_DTYPES.get(metric, "float64"))
    return pd.DataFrame(columns)


def _ratios(totals: np.ndarray) -> dict[str, np.ndarray]:
    """The leaderboard statistics from summed columns (last axis in `SUM_COLUMNS` order)."""
    t = {name: totals[..., i] for i, name in enumerate(SUM_COLUMNS)}
    with np.errstate(invalid="ignore", divide="ignore"):
        market = t["sum_market_brier"]
        return {
            "mean_brier": t["sum_brier"] / t["n"],
            "mean_log_score": t["sum_log_score"] / t["n"],
            "market_brier": np.where(t["n_priced"] > 0, market / t["n_priced"], np.nan),
            "market_log_score": np.where(
                t["n_priced"] > 0, t["sum_market_log_score"] / t["n_priced"], np.nan
            ),
            # matched rows only: the model's Brier where the market had a price
            "skill_vs_market": np.where(
                (t["n_priced"] > 0) & (market > 0), 1.0 - t["sum_brier_priced"] / market, np.nan
            ),
        }


def cluster_bootstrap(
    per_market: np.ndarray, n_boot: int, rng: np.random.Generator, max_cells: int = 500_000
) -> np.ndarray:
    """Resample markets (rows of `per_market`, one row of sums each) with replacement.

    A market predicted on many days is one cluster: its rows move together, so the spread
    reflects how many markets were judged, not how many times. Returns ``n_boot`` rows of
    column totals. Draws are made a chunk at a time, at most `max_cells` market indices,
    so memory is bounded whatever `n_boot`.
    """
    m = per_market.shape[0]
    out = np.empty((n_boot, per_market.shape[1]))
    chunk = max(1, max_cells // max(m, 1))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        drawn = rng.integers(0, m, size=(size, m))  # each resample: m markets, replaced
        # How often each market was drawn in each resample, then one matrix product.
        flat = (drawn + np.arange(size)[:, None] * m).ravel()
        counts = np.bincount(flat, minlength=size * m).reshape(size, m)
        out[start : start + size] = counts @ per_market
    return out


def _group_seed(seed: int, key: tuple) -> list[int]:
    """A seed per group from its key: a group's interval does not depend on the others."""
    text = "|".join("" if pd.isna(k) else str(k) for k in key)  # None and NaN alike
    return [seed, zlib.crc32(text.encode())]


def _group_row(
    group: pd.DataFrame,
    key: tuple,
    seed: int,
    n_boot: int,
    min_markets: int,
    confidence: float,
) -> dict:
    # Markets in a fixed order, so that the seeded draws do not depend on how rows arrived
    # (SQL and the frame path give the same intervals).
    ordered = group.sort_values("market_id", kind="stable")
    per_market = ordered[list(SUM_COLUMNS)].to_numpy(dtype="float64")
    point = _ratios(per_market.sum(axis=0))
    row: dict = {name: float(value) for name, value in point.items()}
    row["n"] = int(per_market[:, 0].sum())
    row["n_markets"] = len(per_market)
    row["n_priced"] = int(per_market[:, 1].sum())
    boot = _ratios(
        cluster_bootstrap(per_market, n_boot, np.random.default_rng(_group_seed(seed, key)))
    )
    tail = (1.0 - confidence) / 2 * 100
    for name, label in (
        ("mean_brier", "brier"),
        ("mean_log_score", "log_score"),
        ("skill_vs_market", "skill"),
    ):
        values = boot[name][~np.isnan(boot[name])]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
        row[f"{label}_lo"], row[f"{label}_hi"] = float(low), float(high)
    row["too_small"] = row["n_markets"] < min_markets
    row["beats_market"] = bool(not row["too_small"] and row["skill_lo"] > 0)
    return row


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "horizon_bucket":
        order = {label: i for i, label in enumerate(HORIZON_BUCKETS)}
        return column.map(order)
    return column


def leaderboard_from_sums(
    sums: pd.DataFrame,
    by: Sequence[str] = ("model",),
    calibration: pd.DataFrame | None = None,
    **options,
) -> pd.DataFrame:
    """The leaderboard from per-market sums (`market_sums`) and, for ECE, `calibration_sums`.

    One row per group of `by` (which includes "model"); see `leaderboard` for the columns.
    Intervals are percentile intervals of a cluster bootstrap over markets, seeded per group.
    """
    return leaderboard_from_parts([sums], by, calibration, **options)


def leaderboard_from_parts(
    parts: Iterable[pd.DataFrame],
    by: Sequence[str] = ("model",),
    calibration: pd.DataFrame | None = None,
    *,
    seed: int = 0,
    n_boot: int = DEFAULT_BOOTSTRAP,
    min_markets: int = MIN_MARKETS,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """`leaderboard_from_sums` over per-market sums that arrive in parts, each group of `by`
    whole in one part (store.scoring streams them so): one part in memory at a time."""
    by = _check_by(by)
    rows = []
    for part in parts:
        for key, group in part.groupby(by, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            stats = _group_row(group, key, seed, n_boot, min_markets, confidence)
            rows.append({**dict(zip(by, key, strict=True)), **stats})
    if not rows:
        return _empty_leaderboard(by)
    board = pd.DataFrame(rows)
    board["ece"] = np.nan
    if calibration is not None and not calibration.empty:
        gaps = (calibration["sum_p"] - calibration["sum_o"]).abs()
        per_group = calibration.assign(gap=gaps).groupby(by, dropna=False)[["gap", "n"]].sum()
        ece = (per_group["gap"] / per_group["n"]).rename("ece_value").reset_index()
        board = board.merge(ece, on=by, how="left")
        board["ece"] = board.pop("ece_value")
    for metric, dtype in _METRIC_DTYPES.items():
        board[metric] = board[metric].astype(dtype)
    others = [k for k in by if k != "model"]
    board = board.sort_values(
        [*others, "mean_brier", "model"], key=_sort_key, kind="stable", na_position="last"
    )
    return board.reset_index(drop=True)[[*by, *LEADERBOARD_METRICS]]


def leaderboard(
    scored: pd.DataFrame,
    by: Sequence[str] = ("model",),
    bins: int = DEFAULT_BINS,
    *,
    seed: int = 0,
    n_boot: int = DEFAULT_BOOTSTRAP,
    min_markets: int = MIN_MARKETS,
) -> pd.DataFrame:
    """Per-group accuracy of the models, each against the market price on its own rows.

    `scored` is the output of `score_predictions`. `by` must include "model", e.g. ["model"],
    ["model", "category"] or ["model", "horizon_bucket"] (derived from horizon_days if needed).

    Columns: the `by` keys, then
      n, n_markets       predictions and distinct markets in the group;
      n_priced           of the predictions, those with a market price;
      mean_brier, brier_lo, brier_hi              over all n predictions, 95% interval;
      mean_log_score, log_score_lo, log_score_hi  likewise;
      market_brier, market_log_score   the market price scored on exactly the n_priced rows
                         this model predicted (no pooled "market" row: each model faces the
                         prices it was compared with);
      skill_vs_market, skill_lo, skill_hi   1 - (model Brier on the n_priced rows) /
                         market_brier, with its interval; NaN when n_priced == 0 or
                         market_brier == 0 (a perfect market cannot be beaten);
      too_small          fewer than `min_markets` markets: read the numbers as anecdotes;
      beats_market       skill_lo > 0 and not too_small: the interval excludes zero;
      ece                expected calibration error of the probabilities, `bins` bins.

    The intervals come from a bootstrap that resamples markets, not predictions: a market
    predicted on 30 days is one piece of evidence about the model, not 30. Seeded, so the
    same scores give the same leaderboard.

    Sorted by the non-model keys (horizon buckets in horizon order), then mean_brier
    ascending, then model. An empty input gives an empty frame with these columns.
    """
    by = _check_by(by)
    bins = _check_bins(bins)
    df = _with_horizon_bucket(scored, by)
    needed = [*by, "probability", "outcome", "market_price", *SCORE_COLUMNS]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"leaderboard: missing columns {missing} (score_predictions first)")
    if df.empty:
        return _empty_leaderboard(by)
    return leaderboard_from_sums(
        market_sums(df, by),
        by,
        calibration_sums(df, by, bins),
        seed=seed,
        n_boot=n_boot,
        min_markets=min_markets,
    )


# --------------------------------------------------------------------------- chart


def calibration_chart(bins_by_model: dict[str, pd.DataFrame], title: str = "Reliability") -> bytes:
    """A reliability diagram (one line per model, from `calibration_bins` tables) as PNG bytes.

    Upper panel: observed frequency against mean predicted probability, with the diagonal of
    perfect calibration; empty bins are skipped. Lower panel: forecasts per bin.
    Rendered in memory on an Agg canvas without pyplot (no display, no global state).
    """
    # Imported here: matplotlib takes ~0.4 s to load and only this chart needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    counts.set_ylabel("forecasts per bin")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
