"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from worker import startup

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
    workers are live, which declared themselves defunct, which could not start it and why, and how
    much work waits; `warnings` names what keeps jobs from running. `status` is "degraded" while a
    model cannot take jobs (every worker that tried to start it failed): its jobs are refused with
    the reason. 503 when Redis is unreachable."""
    try:
        redis.ping()
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "detail": f"redis unreachable: {exc}"}, status_code=503)
    models, warnings = {}, []
    unavailable = jobstore.unavailable_models(redis, settings)
    for name in sorted(set(jobstore.served_models(redis, settings)) | set(unavailable)):
        workers, defunct = jobstore.worker_counts(redis, name)
        queued = jobstore.queue_for(redis, name).count
        # An unavailable model's failures were read with it; the others' are read here.
        failures = unavailable[name]["startup_failures"] if name in unavailable else startup.failures(redis, name)
        models[name] = {"workers": workers, "defunct": defunct, "queued": queued, "startup_failures": failures}
        if name in unavailable:
            models[name]["unavailable"] = unavailable[name]["reason"]
            warnings.append(unavailable[name]["reason"])
        else:
            if workers == 0 and (queued or name == settings.default_model):
                warnings.append(f"no live worker for model {name}: {queued} job(s) wait until one starts")
            warnings += [f"a worker at {f['where']} could not start model {name}: {f['reason']}" for f in failures]
        for d in defunct:
            warnings.append(f"worker {d['worker']} declared itself defunct: {d['reason']}")
    hooks = request.app.state.webhooks
    if hooks.entries and not hooks.enabled:
        warnings.append(f"webhooks are off: {hooks.disabled_reason}")
    default_workers = models[settings.default_model]["workers"] if settings.default_model in models else 0
    return {"status": "degraded" if unavailable else "ready", "model": settings.default_model,
            "workers": default_workers, "models": models, "warnings": warnings}
