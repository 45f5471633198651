"""The model leaderboard: per-market sums, a cluster bootstrap over markets, and the table
of each model against the market with 95% intervals (conventions in core.scoring)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from prediction_pipeline.core.scoring import (
    DEFAULT_BINS,
    HORIZON_BUCKETS,
    SCORE_COLUMNS,
    bin_index,
    check_bins,
    horizon_bucket,
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


def market_sums(scored: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Per (`by` keys, market) sums of the scores: the unit the bootstrap resamples.

    `scored` is the output of `score_predictions`. The store computes the same frame with
    SQL (`store.scoring.leaderboard_market_sum_parts`), so that memory grows with the number of
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
    bins = check_bins(bins)
    df = _with_horizon_bucket(scored, by)
    work = df[by].assign(
        bin=bin_index(df["probability"].to_numpy(dtype="float64"), bins),
        n=1,
        sum_p=df["probability"].astype("float64"),
        sum_o=df["outcome"].astype("float64"),
    )
    grouped = work.groupby([*by, "bin"], dropna=False, sort=False)
    return grouped[["n", "sum_p", "sum_o"]].sum().reset_index()


def calibration_from_sums(sums: pd.DataFrame, bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """A `calibration_bins` table from one model's ``bin, n, sum_p, sum_o`` rows."""
    bins = check_bins(bins)
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
    bins = check_bins(bins)
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
