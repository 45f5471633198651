"""/v1/credits: top a user up."""

# No `from __future__ import annotations`: FastAPI reads the annotations at definition time.
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from prediction_pipeline.api import errors
from prediction_pipeline.api.dependencies import Caller, Engine, IdempotencyKey
from prediction_pipeline.api.idempotency import once
from prediction_pipeline.api.schemas import Balance, CreditsIn
from prediction_pipeline.services import on_demand

router = APIRouter(tags=["credits"])


@router.post("/v1/credits", response_model=Balance)
async def post_credits(
    body: CreditsIn,
    request: Request,
    api_key: Caller,
    key: IdempotencyKey,
    engine: Engine,
) -> JSONResponse:
    """Top a user up (the user is created if new); returns the new balance."""

    def action(scoped: str | None) -> tuple[int, dict]:
        try:
            balance = on_demand.grant(
                engine, body.user, body.amount, note=body.reason, idempotency_key=scoped
            )
        except (LookupError, ValueError) as exc:
            raise errors.from_service(exc) from None
        return 200, Balance(user=body.user, balance=balance).model_dump()

    return await once(request, engine, api_key, key, action)
