"""GET /models: what the service accepts jobs for, with sizes, defaults, workers and queued work."""

from __future__ import annotations

from fastapi import APIRouter

from worker.params import QUALITY_PRESETS, count_evaluations

from .. import jobstore
from ..deps import ApiKey, RedisDep, SettingsDep
from ..schemas import ModelList, ModelPublic, QualityPreset

router = APIRouter(tags=["models"], dependencies=[ApiKey])


@router.get("/models", response_model=ModelList, summary="Available models")
def list_models(redis: RedisDep, settings: SettingsDep) -> ModelList:
    """Every model jobs can be submitted for, including configured models with no live worker
    yet (their jobs wait in the queue until a worker starts: `workers` is 0, `queued` counts them)."""
    out = []
    for name, info in sorted(jobstore.served_models(redis, settings).items()):
        workers, defunct = jobstore.worker_counts(redis, name)
        fields = {k: v for k, v in info.items() if k in ModelPublic.model_fields}
        out.append(ModelPublic(**fields, default=name == settings.model, workers=workers,
                               defunct_workers=len(defunct), queued=jobstore.queue_for(redis, name).count))
    presets = {name: QualityPreset(**p, evaluations=count_evaluations(p["steps"], p["jump_length"], p["jump_n_sample"]))
               for name, p in QUALITY_PRESETS.items()}
    return ModelList(default=settings.model, models=out, presets=presets)
