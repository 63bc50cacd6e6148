"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from rq import Worker

from .. import jobstore
from ..deps import RedisDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis is reachable and a worker serves the default model",
            responses={503: {"description": "not ready, with the reason"}})
def readyz(redis: RedisDep, settings: SettingsDep):
    try:
        redis.ping()
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "detail": f"redis unreachable: {exc}"}, status_code=503)
    workers = Worker.count(connection=redis, queue=jobstore.queue_for(redis, settings.model))
    if workers == 0:
        return JSONResponse({"status": "unavailable", "detail": f"no live worker for model {settings.model}"},
                            status_code=503)
    return {"status": "ready", "model": settings.model, "workers": workers}
