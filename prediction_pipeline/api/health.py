"""Liveness and readiness probes (no API key: the orchestrator calls them)."""

# No `from __future__ import annotations`: FastAPI reads the annotations at definition time.
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from prediction_pipeline.api.dependencies import Engine
from prediction_pipeline.services import api_access

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(engine: Engine) -> JSONResponse:
    """The app database answers and its schema is current."""
    reason = api_access.readiness(engine)
    if reason is not None:
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready"})
