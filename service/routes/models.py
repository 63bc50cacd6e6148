"""GET /models: what the workers serve, with sizes, defaults and live capacity."""

from __future__ import annotations

from fastapi import APIRouter
from rq import Worker

from .. import jobstore
from ..deps import RedisDep, SettingsDep
from ..schemas import ModelList, ModelPublic

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList, summary="Available models")
def list_models(redis: RedisDep, settings: SettingsDep) -> ModelList:
    out = []
    for name, info in sorted(jobstore.registered_models(redis).items()):
        queue = jobstore.queue_for(redis, name)
        out.append(ModelPublic(**info, default=name == settings.model,
                               workers=Worker.count(connection=redis, queue=queue), queued=queue.count))
    return ModelList(default=settings.model, models=out)
