"""The first day of the daily partitions. Here, without Dagster, so that the CLI can check a
day against it without importing Dagster (a second of start-up for every command)."""

PARTITIONS_START = "2026-01-01"
