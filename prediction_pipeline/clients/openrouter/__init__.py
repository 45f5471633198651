"""OpenRouter chat completions: the client (`client`), its errors (`errors`) and how its
answers are read (`parsing`). The names below are the package's public API; the forecaster
that turns a market into a forecast with it is `services.forecasters.OpenRouterForecaster`."""

from prediction_pipeline.clients.openrouter.client import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_TOKENS,
    OpenRouterClient,
    SpendHook,
)
from prediction_pipeline.clients.openrouter.errors import (
    OpenRouterAuthError,
    OpenRouterBadRequestError,
    OpenRouterCreditsError,
    OpenRouterError,
    OpenRouterForbiddenError,
    OpenRouterUnavailableError,
)
from prediction_pipeline.clients.openrouter.parsing import IN_FLIGHT_BUDGET_EXHAUSTED, Completion

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "IN_FLIGHT_BUDGET_EXHAUSTED",
    "Completion",
    "OpenRouterAuthError",
    "OpenRouterBadRequestError",
    "OpenRouterClient",
    "OpenRouterCreditsError",
    "OpenRouterError",
    "OpenRouterForbiddenError",
    "OpenRouterUnavailableError",
    "SpendHook",
]
