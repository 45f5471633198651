"""How far each prediction sits from the market on a snapshot day, and which way it drifted.

Set-wise: predictions and one day's prices in, one row per prediction out; no loop over rows.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

#: Two distances closer than this count as equal (so float noise is not a "move").
DISTANCE_TOLERANCE = 1e-9

DIRECTIONS: tuple[str, ...] = ("toward", "away", "flat", "unknown")
PREDICTION_COLUMNS: tuple[str, ...] = (
    "prediction_id",
    "market_id",
    "day",
    "probability",
    "market_price",
)
PRICE_COLUMNS: tuple[str, ...] = ("market_id", "yes_price")
DELTA_COLUMNS: tuple[str, ...] = (
    "prediction_id",
    "snapshot_day",
    "market_price",
    "delta",
    "abs_delta",
    "direction",
)


def _check_unit_interval(values: pd.Series, name: str) -> None:
    bad = values.notna() & ((values < 0.0) | (values > 1.0))
    if bad.any():
        raise ValueError(f"{name} must lie in [0, 1]; got {values[bad].head(5).tolist()}")


def _as_day(value) -> dt.date:
    return pd.Timestamp(value).date()


def _empty_deltas() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prediction_id": pd.Series(dtype=object),
            "snapshot_day": pd.Series(dtype=object),
            "market_price": pd.Series(dtype="float64"),
            "delta": pd.Series(dtype="float64"),
            "abs_delta": pd.Series(dtype="float64"),
            "direction": pd.Series(dtype=object),
        }
    )


def compute_deltas(predictions: pd.DataFrame, prices: pd.DataFrame, snapshot_day) -> pd.DataFrame:
    """Compare each prediction with its market's price on `snapshot_day`.

    predictions: ``prediction_id, market_id, day`` (the day it was made), ``probability`` and
    ``market_price`` (the YES price when it was made; may be NaN). Other columns (``model``...)
    are allowed and ignored.
    prices: ``market_id, yes_price``, the YES price on `snapshot_day`, at most one per market.

    Returns one row per prediction made on or before `snapshot_day` whose market has a price
    that day (others are left out: no price, no delta; a prediction made after the snapshot
    has not drifted yet), with columns
      prediction_id, snapshot_day (a datetime.date), market_price (on the snapshot day),
      delta = market_price - probability (in [-1, 1]), abs_delta = |delta|,
      direction: "toward" if the market moved toward the prediction since it was made
      (|price_now - p| < |price_then - p|), "away" if it moved away (>), "flat" if its
      distance to the prediction did not change (an unchanged price, or a jump to the
      mirror price on the other side of p), "unknown" if price_then is missing.
    Raises ValueError on missing columns, prices or probabilities outside [0, 1], or a market
    with more than one price.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    missing += [c for c in PRICE_COLUMNS if c not in prices.columns]
    if missing:
        raise ValueError(f"compute_deltas: missing columns {missing}")
    day = _as_day(snapshot_day)

    now = prices[list(PRICE_COLUMNS)].astype({"yes_price": "float64"})
    now = now[now["yes_price"].notna()]
    _check_unit_interval(now["yes_price"], "yes_price")
    duplicated = now["market_id"].duplicated(keep=False)
    if duplicated.any():
        markets = now.loc[duplicated, "market_id"].unique().tolist()[:5]
        raise ValueError(f"compute_deltas: more than one price for markets {markets}")

    preds = predictions[list(PREDICTION_COLUMNS)].astype(
        {"probability": "float64", "market_price": "float64"}
    )
    if preds["probability"].isna().any():
        raise ValueError("compute_deltas: probability must not be missing")
    _check_unit_interval(preds["probability"], "probability")
    _check_unit_interval(preds["market_price"], "market_price")
    made = pd.to_datetime(preds["day"])
    if made.dt.tz is not None:  # an aware timestamp: compare its own calendar day
        made = made.dt.tz_localize(None)
    made = made.dt.normalize()
    preds = preds[(made <= pd.Timestamp(day)).to_numpy()]

    joined = preds.rename(columns={"market_price": "price_then"}).merge(
        now.rename(columns={"yes_price": "price_now"}), on="market_id", how="inner"
    )
    if joined.empty:
        return _empty_deltas()

    p = joined["probability"].to_numpy()
    then = joined["price_then"].to_numpy()
    current = joined["price_now"].to_numpy()
    delta = current - p
    gap_now = np.abs(delta)
    gap_then = np.abs(then - p)
    direction = np.select(
        [
            np.isnan(then),
            np.abs(gap_now - gap_then) <= DISTANCE_TOLERANCE,
            gap_now < gap_then,
        ],
        ["unknown", "flat", "toward"],
        default="away",
    )
    return pd.DataFrame(
        {
            "prediction_id": joined["prediction_id"].to_numpy(),
            "snapshot_day": np.full(len(joined), day, dtype=object),
            "market_price": current,
            "delta": delta,
            "abs_delta": gap_now,
            "direction": direction.astype(object),
        }
    )[list(DELTA_COLUMNS)]


def largest_movers(deltas: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The `n` rows with the largest ``abs_delta`` (market furthest from the prediction),
    largest first; ties broken by ``prediction_id`` so the answer is deterministic."""
    if n < 0:
        raise ValueError(f"largest_movers: n must be >= 0, got {n}")
    if "abs_delta" not in deltas.columns:
        raise ValueError("largest_movers: missing column 'abs_delta'")
    ties = ["prediction_id"] if "prediction_id" in deltas.columns else []
    ranked = deltas.sort_values(
        ["abs_delta", *ties], ascending=[False, *([True] * len(ties))], kind="stable"
    )
    return ranked.head(n).reset_index(drop=True)


def mean_abs_delta_by_model(deltas_with_model: pd.DataFrame) -> pd.DataFrame:
    """Per model: ``model, n, mean_abs_delta``, closest to the market first.

    Input: `compute_deltas` output joined with the predictions' ``model`` column.
    """
    missing = [c for c in ("model", "abs_delta") if c not in deltas_with_model.columns]
    if missing:
        raise ValueError(f"mean_abs_delta_by_model: missing columns {missing}")
    out = (
        deltas_with_model.groupby("model", dropna=False)
        .agg(n=("abs_delta", "size"), mean_abs_delta=("abs_delta", "mean"))
        .reset_index()
    )
    out["n"] = out["n"].astype("int64")
    return out.sort_values(["mean_abs_delta", "model"], kind="stable").reset_index(drop=True)
