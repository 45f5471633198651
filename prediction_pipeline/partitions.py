"""Partitions: day, model (dynamic, kept in step with the models table) and model x day."""

import dagster as dg

PARTITIONS_START = "2026-01-01"

# end_offset=1 makes today's partition exist (and schedulable) during today.
daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)

model_partitions = dg.DynamicPartitionsDefinition(name="models")

# Keys look like "2026-11-02|openai/gpt-4o": dimensions sorted by name, day first.
model_day_partitions = dg.MultiPartitionsDefinition(
    {"day": daily_partitions, "model": model_partitions}
)
