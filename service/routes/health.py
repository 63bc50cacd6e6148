"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import jobstore
from ..deps import RedisDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The API can accept jobs; what serves them",
            responses={503: {"description": "not ready, with the reason"}})
def readyz(redis: RedisDep, settings: SettingsDep, request: Request):
    """200 when Redis answers: jobs are accepted and wait in their queue, even while no worker is
    live (workers starting, a deploy, autoscaling from zero). The body says, per model, how many
    workers are live, which declared themselves defunct and how much work waits, and `warnings`
    names what keeps queued jobs from running. 503 when Redis is unreachable."""
    try:
        redis.ping()
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "detail": f"redis unreachable: {exc}"}, status_code=503)
    models, warnings = {}, []
    for name in sorted(jobstore.served_models(redis, settings)):
        workers, defunct = jobstore.worker_counts(redis, name)
        queued = jobstore.queue_for(redis, name).count
        models[name] = {"workers": workers, "defunct": defunct, "queued": queued}
        if workers == 0 and (queued or name == settings.default_model):
            warnings.append(f"no live worker for model {name}: {queued} job(s) wait until one starts")
        for d in defunct:
            warnings.append(f"worker {d['worker']} declared itself defunct: {d['reason']}")
    hooks = request.app.state.webhooks
    if hooks.entries and not hooks.enabled:
        warnings.append(f"webhooks are off: {hooks.disabled_reason}")
    return {"status": "ready", "model": settings.default_model, "workers": models[settings.default_model]["workers"]
            if settings.default_model in models else 0, "models": models, "warnings": warnings}
