"""ForecastBench question and resolution sets, read as markets for backtests.

ForecastBench (forecastbench.org, datasets under CC BY-SA 4.0) publishes question sets
(``{"forecast_due_date", "question_set", "questions": [...]}``) and resolution sets
(``{"forecast_due_date", "question_set", "resolutions": [...]}``). Market questions carry the
market's price at a freeze date (``freeze_datetime``, ``freeze_datetime_value``); their
resolutions say whether and how the market resolved.

Only single market questions (``source`` in `MARKET_SOURCES`, one id, a freeze value in
[0, 1]) become markets: open on the freeze date at the freeze price, resolved YES/NO on the
first resolution date at which the resolution set says the market resolved to 1 or 0. The
rest (dataset questions, combination questions, missing or out-of-range freeze values) are
skipped and counted with a reason. Extra fields are ignored; a file whose structure is not a
question or resolution set raises `ForecastBenchFormatError` with one clear line.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from prediction_pipeline.core.markets import Market, MarketStatus

SOURCE_NAME = "forecastbench"
#: Question sources whose freeze value is a market price (probability of YES).
MARKET_SOURCES = ("polymarket", "manifold")


class ForecastBenchFormatError(ValueError):
    """A question or resolution set file that does not have the published structure."""


def _parse_datetime(value: Any) -> dt.datetime | None:
    """ISO dates and datetimes ("2026-03-05", "2026-03-05T00:00:00+00:00", "...Z"); else None."""
    if value in (None, "", "N/A") or not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Question(_Lenient):
    id: str | list[Any]  # a list for combination questions
    source: str
    question: str | list[Any]
    background: str | None = ""
    resolution_criteria: str | None = ""
    market_info_open_datetime: str | None = None
    market_info_close_datetime: str | None = None
    market_info_resolution_criteria: str | None = None
    url: str | None = None
    freeze_datetime: str | None = None
    freeze_datetime_value: Any = None  # a list for combination questions
    freeze_datetime_value_explanation: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value


class QuestionSet(_Lenient):
    forecast_due_date: str
    question_set: str
    questions: list[dict[str, Any]]  # validated one by one: one bad question is skipped


class Resolution(_Lenient):
    id: str | list[Any]
    source: str
    direction: Any = None
    resolution_date: str
    resolved_to: float | str | None = None
    resolved: bool = False

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value


class ResolutionSet(_Lenient):
    forecast_due_date: str | None = None
    question_set: str | None = None
    resolutions: list[dict[str, Any]]


def _validate(model: type[BaseModel], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ForecastBenchFormatError(
            f"{what} is not a ForecastBench {model.__name__}: {where}: {first['msg']}"
        ) from None


@dataclass(frozen=True)
class BenchmarkQuestion:
    """One market question: its freeze-day state and, if known, how it resolved."""

    source_id: str
    question: str
    description: str
    category: str
    url: str
    freeze_day: dt.date
    freeze_price: float
    end_date: dt.datetime | None
    resolved_outcome: str | None = None  # "yes" / "no" once resolved
    resolved_on: dt.date | None = None

    def observe(self, day: dt.date) -> Market | None:
        """The market on `day`: unknown before the freeze day, priced only on it (no later
        price is published), resolved from its resolution date on."""
        if day < self.freeze_day:
            return None
        resolved = self.resolved_on is not None and day >= self.resolved_on
        closed_at = None
        if resolved:
            closed_at = dt.datetime.combine(self.resolved_on, dt.time(), tzinfo=dt.UTC)
        if resolved:
            price: float | None = 1.0 if self.resolved_outcome == "yes" else 0.0
        else:
            price = self.freeze_price if day == self.freeze_day else None
        return Market(
            source=SOURCE_NAME,
            source_id=self.source_id,
            question=self.question,
            description=self.description,
            slug=self.url,
            category=self.category,
            tags=(self.category,),
            end_date=self.end_date,
            yes_price=price,
            status=MarketStatus.RESOLVED if resolved else MarketStatus.OPEN,
            resolved_outcome=self.resolved_outcome if resolved else None,
            closed_at=closed_at,
        )


@dataclass
class Benchmark:
    question_set: str
    forecast_due_date: str
    questions: dict[str, BenchmarkQuestion] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> questions

    @property
    def freeze_days(self) -> list[dt.date]:
        return sorted({q.freeze_day for q in self.questions.values()})


def _freeze_price(value: Any) -> float | None:
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    return price if 0.0 <= price <= 1.0 else None


def _market_question(raw: dict[str, Any], due: dt.datetime | None) -> BenchmarkQuestion | str:
    """A BenchmarkQuestion, or the reason this question is skipped."""
    try:
        q = Question.model_validate(raw)
    except ValidationError:
        return "malformed question"
    if isinstance(q.id, list) or isinstance(q.question, list):
        return "combination question"
    if q.source not in MARKET_SOURCES:
        return f"not a market question ({q.source})"
    price = _freeze_price(q.freeze_datetime_value)
    if price is None:
        return "freeze value missing or outside [0, 1]"
    frozen = _parse_datetime(q.freeze_datetime) or due
    if frozen is None:
        return "no freeze date"
    criteria = q.market_info_resolution_criteria or q.resolution_criteria or ""
    description = "\n\n".join(part for part in (q.background, criteria) if part)
    return BenchmarkQuestion(
        source_id=f"{q.source}:{q.id}",
        question=q.question,
        description=description,
        category=q.source,
        url=q.url or "",
        freeze_day=frozen.date(),
        freeze_price=price,
        end_date=_parse_datetime(q.market_info_close_datetime),
    )


def _outcomes(resolutions: list[dict[str, Any]]) -> dict[str, tuple[dt.date, str]]:
    """Per `source:id`: the first date at which the market had resolved to 1 (YES) or 0 (NO).

    Rows that are not resolved, or resolved to anything else (a price at a horizon date), say
    nothing about the outcome yet.
    """
    found: dict[str, tuple[dt.date, str]] = {}
    for raw in resolutions:
        try:
            row = Resolution.model_validate(raw)
        except ValidationError:
            continue
        when = _parse_datetime(row.resolution_date)
        if isinstance(row.id, list) or not row.resolved or when is None:
            continue
        try:
            value = float(row.resolved_to)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if value not in (0.0, 1.0):
            continue
        key = f"{row.source}:{row.id}"
        outcome = "yes" if value == 1.0 else "no"
        if key not in found or when.date() < found[key][0]:
            found[key] = (when.date(), outcome)
    return found


def load_benchmark(
    questions: Any,
    resolutions: Any | None,
    *,
    names: tuple[str, str] = ("questions", "resolutions"),
) -> Benchmark:
    """A Benchmark from the decoded JSON of a question set and (optionally) its resolution set."""
    qs = _validate(QuestionSet, questions, names[0])
    due = _parse_datetime(qs.forecast_due_date)
    bench = Benchmark(question_set=qs.question_set, forecast_due_date=qs.forecast_due_date)
    for raw in qs.questions:
        result = _market_question(raw, due) if isinstance(raw, dict) else "malformed question"
        if isinstance(result, str):
            bench.skipped[result] += 1
        elif result.source_id in bench.questions:
            bench.skipped["duplicate id"] += 1
        else:
            bench.questions[result.source_id] = result
    if resolutions is not None:
        rs = _validate(ResolutionSet, resolutions, names[1])
        for key, (day, outcome) in _outcomes(rs.resolutions).items():
            if key in bench.questions:
                bench.questions[key] = _resolved(bench.questions[key], day, outcome)
    return bench


def _resolved(q: BenchmarkQuestion, day: dt.date, outcome: str) -> BenchmarkQuestion:
    """Resolved on the horizon date that first shows it, or on the market's close date if
    that is earlier: resolution sets are dated by forecast horizon, so the market itself
    usually settled before. The earlier date matters for knowledge cutoffs (a model may
    know an answer from the day the market settled). Never before the day after the freeze,
    so the market can still be predicted on its freeze day."""
    if q.end_date is not None and q.freeze_day < q.end_date.date() < day:
        day = q.end_date.date()
    return replace(
        q, resolved_outcome=outcome, resolved_on=max(day, q.freeze_day + dt.timedelta(days=1))
    )
