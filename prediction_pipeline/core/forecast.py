"""What a forecaster is asked and what it must answer, and how raw LLM text becomes a
validated forecast (or a clear error, never a stored guess)."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_RATIONALE_CHARS = 4000


class ForecastOutput(BaseModel):
    """The structured answer every model must give (also sent as the strict JSON schema)."""

    model_config = ConfigDict(extra="forbid")

    probability: float = Field(ge=0.0, le=1.0, description="Probability that YES resolves.")
    confidence: Literal["low", "medium", "high"] = Field(
        description="How confident the forecaster is in its own probability."
    )
    rationale: str = Field(
        min_length=1, max_length=MAX_RATIONALE_CHARS, description="Short reasoning."
    )


def forecast_json_schema() -> dict:
    """OpenRouter `response_format` for strict structured output."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "forecast",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "probability": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 1,
                        "description": "Probability between 0 and 1 that the market resolves YES.",
                    },
                    "confidence": {"type": "string", "enum": ["low", "medium", "high"]},
                    "rationale": {
                        "type": "string",
                        "description": "Two to five sentences of reasoning.",
                    },
                },
                "required": ["probability", "confidence", "rationale"],
                "additionalProperties": False,
            },
        },
    }


class InvalidForecast(ValueError):
    """The model answered, but not with a usable forecast: a failed attempt."""


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_forecast(text: str | None) -> ForecastOutput:
    """Validate raw model output. Tolerates a ```json fence; nothing else is guessed."""
    if text is None or not text.strip():
        raise InvalidForecast("empty answer")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidForecast(
            f"answer is not JSON ({exc.msg} at char {exc.pos}): {body[:120]!r}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidForecast(f"answer is JSON but not an object: {body[:120]!r}")
    if isinstance(data.get("rationale"), str) and len(data["rationale"]) > MAX_RATIONALE_CHARS:
        data["rationale"] = data["rationale"][:MAX_RATIONALE_CHARS]
    try:
        return ForecastOutput.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidForecast(f"answer does not fit the forecast schema: {problems}") from None


CONFIDENCE_VALUES = {"low": 0.33, "medium": 0.66, "high": 0.9}


class MarketContext(BaseModel):
    """Everything a forecaster may see about one market on one day."""

    model_config = ConfigDict(frozen=True)

    market_id: int
    source_id: str
    question: str
    description: str = ""
    category: str | None = None
    end_date: dt.datetime | None = None
    day: dt.date
    market_price: float | None = None  # YES price on `day`, the baseline to beat
    price_history: tuple[float, ...] = ()  # daily YES prices, oldest first, ending at `day`
    research: str | None = None  # notes from a session's research step (untrusted text)

    @field_validator("end_date")
    @classmethod
    def _aware_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        # SQLite hands timezone-aware columns back naive; they were stored as UTC.
        return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


class ForecastResult(BaseModel):
    """A validated forecast plus what it cost to get it."""

    probability: float = Field(ge=0.0, le=1.0)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    rationale: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    web_search_used: bool = False
    attempts: int = 1
    rate_limited: int = 0  # 429s seen while getting it
