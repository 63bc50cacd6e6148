"""GET /models: what the workers serve, with sizes, defaults and live capacity."""

from __future__ import annotations

from fastapi import APIRouter
from rq import Worker

from worker.jobs import QUALITY_PRESETS, count_evaluations

from .. import jobstore
from ..deps import ApiKey, RedisDep, SettingsDep
from ..schemas import ModelList, ModelPublic, QualityPreset

router = APIRouter(tags=["models"], dependencies=[ApiKey])


@router.get("/models", response_model=ModelList, summary="Available models")
def list_models(redis: RedisDep, settings: SettingsDep) -> ModelList:
    out = []
    for name, info in sorted(jobstore.registered_models(redis).items()):
        queue = jobstore.queue_for(redis, name)
        out.append(ModelPublic(**info, default=name == settings.model,
                               workers=Worker.count(connection=redis, queue=queue), queued=queue.count))
    presets = {name: QualityPreset(**p, evaluations=count_evaluations(p["steps"], p["jump_length"], p["jump_n_sample"]))
               for name, p in QUALITY_PRESETS.items()}
    return ModelList(default=settings.model, models=out, presets=presets)
