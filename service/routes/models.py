"""GET /models: what the service accepts jobs for, with sizes, defaults, workers and queued work."""

from __future__ import annotations

from fastapi import APIRouter

from models.sampler_settings import SETTINGS, settings_class
from worker.params import PRESET_BUDGETS, PRESET_DESCRIPTIONS, QUALITY_PRESETS, model_defaults

from .. import jobstore
from ..deps import ApiKey, RedisDep, SettingsDep
from ..schemas import ModelList, ModelPublic, QualityPreset, SamplerPublic

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
    served = {m.name: m for m in out}
    default_info = served[settings.model].model_dump() if settings.model in served else None
    presets = {}
    for name, p in QUALITY_PRESETS.items():
        cls = settings_class(p["sampler"])
        values = {k: v for k, v in p.items() if k != "sampler"}
        base = model_defaults(default_info, cls.name) if default_info else {}
        presets[name] = QualityPreset(sampler=cls.name, settings=values, evaluations=cls(**{**base, **values}).evaluations,
                                      budget=PRESET_BUDGETS.get(name), description=PRESET_DESCRIPTIONS.get(name, ""))
    samplers = [SamplerPublic(**cls.describe()) for cls in SETTINGS.values()]
    return ModelList(default=settings.model, models=out, samplers=samplers, presets=presets)
