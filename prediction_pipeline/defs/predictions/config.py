"""Run config of a `predictions` partition (names fixed by the old batch event)."""

from pydantic import Field

from prediction_pipeline.defs.run_config import RunConfig


class PredictionsConfig(RunConfig):
    top_markets_count: int = Field(default=50, ge=1, le=10_000, description="Markets to forecast.")
    target_days_from_now: float = Field(
        default=1, ge=0, description="The end-date window opens this many days after the day."
    )
    end_date_range_hours: float = Field(
        default=24 * 60, gt=0, description="Width of the end-date window, in hours."
    )
    use_web_search: bool | None = Field(
        default=None, description="Override the model's web-search default."
    )
    exclude_categories: list[str] = Field(default_factory=list)
    experiment_tag: str | None = None
    experiment_notes: str | None = None
    show_market_price: bool = Field(
        default=False, description="Show the market price to the model (models tend to copy it)."
    )
    max_cost_usd: float | None = Field(
        default=None, ge=0, description="Override the model's spend cap for this model and day."
    )
    max_failure_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Fail the partition when more than this share of attempted markets failed.",
    )
