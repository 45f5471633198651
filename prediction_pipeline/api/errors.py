"""How the API answers mistakes: one JSON shape, a 4xx with the field at fault, never a
traceback. Bugs are logged here and answered with a bare 500."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from prediction_pipeline.services.on_demand import IdempotencyConflict, InsufficientCredits

log = logging.getLogger("prediction_pipeline.api")


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": error, "message": message, **extra}
        self.headers: dict[str, str] = {}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, fields=[{"field": field, "message": message}])


def from_service(exc: Exception, model_field: str = "model") -> ApiError:
    """The services' errors, by kind; LookupErrors name what was not found first."""
    if isinstance(exc, InsufficientCredits):
        return ApiError(
            402,
            "insufficient_credits",
            str(exc),
            balance=exc.balance,
            required=exc.required,
        )
    if isinstance(exc, IdempotencyConflict):
        return ApiError(409, "idempotency_conflict", str(exc))
    message = str(exc)
    for prefix, field in (("no market", "market"), ("no user", "user")):
        if message.startswith(prefix):
            return invalid(field, message)
    if isinstance(exc, LookupError):
        return invalid(model_field, message)
    return invalid("body", message)


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "body")


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        body = {"error": "invalid_request", "message": summary, "fields": fields}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": error, "message": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.ProgrammingError)
    async def _database(_request: Request, exc: sa.exc.DBAPIError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig.__class__.__name__)
        message = (
            "the app database is unreachable or not upgraded: "
            "run `prediction-pipeline db upgrade` (see /readyz)"
        )
        return JSONResponse({"error": "not_ready", "message": message}, status_code=503)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"error": "internal_error", "message": "internal error"}, 500)
