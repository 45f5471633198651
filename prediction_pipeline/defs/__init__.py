"""One folder per workload: its assets, checks, jobs, schedules and sensors."""

import warnings

import dagster as dg

# Code references (each asset linked to its source file in the UI) are beta in 1.13: say it
# once here instead of on every load of the code location.
warnings.filterwarnings(
    "ignore", category=dg.BetaWarning, message=".*(source_code_references|CodeReference)"
)
# Dagster's own run_failure_sensor passes `owners` (beta) to SensorDefinition: not ours.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message="Parameter `owners`")
# Two more beta APIs we choose deliberately: the explicit (day, model) -> day partition mapping,
# and an automation sensor evaluated in the code server (defs/automation.py: its conditions
# read the model registry).
warnings.filterwarnings(
    "ignore", category=dg.BetaWarning, message="Class `MultiToSingleDimensionPartitionMapping`"
)
warnings.filterwarnings(
    "ignore", category=dg.BetaWarning, message="Parameter `use_user_code_server`"
)
