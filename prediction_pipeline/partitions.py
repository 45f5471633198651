"""Partitions: day, model (dynamic, kept in step with the models table) and model x day."""

import datetime as dt

import dagster as dg

from prediction_pipeline.core.partition_days import PARTITIONS_START

# end_offset=1 makes today's partition exist (and schedulable) during today.
daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)

model_partitions = dg.DynamicPartitionsDefinition(name="models")

KEY_FORMAT = "DAY|MODEL, e.g. 2026-11-29|openai/gpt-4o (day first, YYYY-MM-DD)"


class ModelDayPartitions(dg.MultiPartitionsDefinition):
    """Day x model. Dagster's own error for a key that is not a partition is "Could not find a
    partition with key ...": this one says the format and the fix. `dagster asset materialize`
    still wraps it in a traceback of its own; its first exception carries this message."""

    def validate_partition_key(self, partition_key, context) -> None:
        try:
            super().validate_partition_key(partition_key, context)
        except dg.DagsterUnknownPartitionError:
            raise dg.DagsterUnknownPartitionError(_explain_unknown_key(partition_key)) from None


def _explain_unknown_key(key: str) -> str:
    try:
        day, model = parse_model_day_key(key)
    except ValueError as exc:
        return str(exc)
    return (
        f"no partition {str(key)!r}: either model {model!r} is not a `models` partition "
        f"(`prediction-pipeline models add {model}` or `prediction-pipeline db upgrade`, with "
        f"DAGSTER_HOME set) or day {day} is outside {PARTITIONS_START}..tomorrow"
    )


# Keys look like "2026-11-02|openai/gpt-4o": dimensions sorted by name, day first.
model_day_partitions = ModelDayPartitions({"day": daily_partitions, "model": model_partitions})


def add_model_partitions(instance: dg.DagsterInstance, slugs: list[str]) -> list[str]:
    """Add the `models` partitions the instance lacks; returns the slugs added."""
    existing = set(instance.get_dynamic_partitions(model_partitions.name))
    missing = [slug for slug in dict.fromkeys(slugs) if slug not in existing]
    if missing:
        instance.add_dynamic_partitions(model_partitions.name, missing)
    return missing


def _is_day(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def parse_model_day_key(key: str | dg.MultiPartitionKey) -> tuple[dt.date, str]:
    """(day, model) of a `predictions` partition key; a ValueError names the format and
    what is wrong (a `/`-separated day, the model first, no `|`)."""
    if isinstance(key, dg.MultiPartitionKey):
        parts = key.keys_by_dimension
        day, model = parts.get("day", ""), parts.get("model", "")
    else:
        day, _, model = str(key).partition("|")
    if _is_day(model):
        raise ValueError(f"partition key {str(key)!r} is not {KEY_FORMAT}: the day comes first")
    if not _is_day(day):
        raise ValueError(
            f"partition key {str(key)!r} is not {KEY_FORMAT}: {day!r} is not a day in YYYY-MM-DD"
        )
    if not model:
        raise ValueError(f"partition key {str(key)!r} has no model after '|': use {KEY_FORMAT}")
    return dt.date.fromisoformat(day), model
