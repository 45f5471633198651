"""Operator CLI: `prediction-pipeline --help`. One module per area; importing them
registers their commands on `main`."""

from prediction_pipeline.cli import api, data, demo, on_demand, people  # noqa: F401
from prediction_pipeline.cli.base import main

__all__ = ["main"]
