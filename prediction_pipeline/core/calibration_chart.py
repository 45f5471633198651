"""The reliability diagram of the leaderboard, rendered to PNG bytes in memory."""

from __future__ import annotations

import io

import pandas as pd


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
