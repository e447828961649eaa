"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import EngineDep
from service.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive (always 200)."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(engine: EngineDep) -> JSONResponse:
    """200 when a model is loaded and /colorize can answer, else 503; says which version and device."""
    current = engine.current
    if current is not None:
        policy = str(engine.chooser.policy)
        serving = current.serving
        body = ReadyResponse(
            ready=True,
            model_version=current.version,
            policy=policy,
            device=engine.device,
            runtime=serving.runtime_name if serving is not None else None,
            runtime_reason=serving.runtime_reason if serving is not None else None,
        )
        return JSONResponse(body.model_dump())
    detail = engine.waiting_reason()
    body = ReadyResponse(ready=False, policy=str(engine.chooser.policy), device=engine.device, detail=detail)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
