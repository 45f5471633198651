"""Bodies of the HTTP API. Strict types: a string is not a number, a number is not a bool,
and unknown fields are refused, so a client's mistake is answered with the field's name."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from prediction_pipeline.services.on_demand import MAX_GRANT, MAX_MODELS

Slug = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# The service checks the address itself (core.email_addresses' rules, the same as the CLI's).
Email = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)]
MarketRef = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictionIn(Body):
    market: MarketRef | int = Field(description="Market id or source id (e.g. syn-002255).")
    model: Slug = Field(description="A registered, enabled model slug.")
    user: Email = Field(description="The user whose credits pay for it.")
    web_search: bool = False


class SessionIn(Body):
    market: MarketRef | int
    models: list[Slug] = Field(min_length=1, max_length=MAX_MODELS)
    user: Email
    web_search: bool = False


class CreditsIn(Body):
    user: Email
    amount: int = Field(ge=1, le=MAX_GRANT, description=f"Whole credits, 1 to {MAX_GRANT}.")
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class Accepted(BaseModel):
    id: str
    status: str
    status_url: str
    events_url: str


class Balance(BaseModel):
    user: str
    balance: int
