"""The base of every run-config class: a bad value fails the step at once, never retried.

Dagster 1.13 checks a run config against its schema at launch, but that schema carries only
the types: pydantic constraints (`Field(ge=1)`) are checked when the step builds the config
object, inside the op's error boundary, where a plain `ValidationError` counts as a user-code
error that the op's RetryPolicy retries (minutes of backoff for a typo). Raising a
`dg.Failure(allow_retries=False)` instead makes the first attempt the last, message first.
"""

import dagster as dg
import pydantic


class InvalidRunConfig(dg.Failure, ValueError):
    """A run config value out of range or a bad combination: fix the config and relaunch."""

    def __init__(self, description: str) -> None:
        super().__init__(description, allow_retries=False)


def _describe(config_class: type, exc: pydantic.ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
        + (f" (got {error['input']!r})" if "input" in error and error["loc"] else "")
        for error in exc.errors()
    )
    return f"invalid run config {config_class.__name__}: {problems}; fix it and relaunch"


class RunConfig(dg.Config):
    def __init__(self, **config) -> None:
        try:
            super().__init__(**config)
        except pydantic.ValidationError as exc:
            raise InvalidRunConfig(_describe(type(self), exc)) from None
