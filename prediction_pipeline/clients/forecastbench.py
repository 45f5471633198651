"""Read ForecastBench question and resolution sets from a file path or an http(s) URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from prediction_pipeline.core.forecastbench import (
    Benchmark,
    ForecastBenchFormatError,
    load_benchmark,
)

DEFAULT_TIMEOUT_SECONDS = 60.0


def read_json(location: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Any:
    """Decoded JSON from a path or URL; one clear line (`ForecastBenchFormatError`) if the
    file is missing, unreachable or not JSON."""
    try:
        if location.startswith(("http://", "https://")):
            response = httpx.get(location, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
            return response.json()
        return json.loads(Path(location).expanduser().read_text(encoding="utf-8"))
    except (OSError, httpx.HTTPError) as exc:
        raise ForecastBenchFormatError(f"cannot read {location}: {exc}") from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise ForecastBenchFormatError(f"{location} is not JSON: {exc}") from None


def load(questions: str, resolutions: str | None) -> Benchmark:
    """A Benchmark from a question set and (optionally) its resolution set."""
    question_data = read_json(questions)
    resolution_data = read_json(resolutions) if resolutions else None
    return load_benchmark(
        question_data, resolution_data, names=(questions, resolutions or "resolutions")
    )
