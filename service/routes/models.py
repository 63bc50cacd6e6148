"""GET /models: what the service accepts jobs for, with sizes, defaults, workers and queued work;
GET /models/{name}/example: an input suited to one of them."""

from __future__ import annotations

import base64
import io

from fastapi import APIRouter, HTTPException
from PIL import Image

from models.sampler_settings import DEFAULT_SAMPLER, SETTINGS
from worker import output_formats, startup
from worker.jobs import JobStatus
from worker.params import STRATEGIES, model_defaults
from worker.presets import PRESETS

from .. import jobstore
from ..deps import ApiKey, RedisDep, SettingsDep
from ..examples import example_for_model, why_no_example
from ..schemas import (ErrorBody, ModelExample, ModelList, ModelPublic, QualityPreset, SamplerPublic,
                       StartupFailure, UnavailableModel)

router = APIRouter(tags=["models"], dependencies=[ApiKey])


@router.get("/models", response_model=ModelList, summary="Available models")
def list_models(redis: RedisDep, settings: SettingsDep) -> ModelList:
    """Every model jobs can be submitted for, including configured models with no live worker
    yet (their jobs wait in the queue until a worker starts: `workers` is 0, `queued` counts them)."""
    out = []
    unavailable = jobstore.unavailable_models(redis, settings)
    for name, info in sorted(jobstore.served_models(redis, settings).items()):
        workers, defunct = jobstore.worker_counts(redis, name)
        fields = {k: v for k, v in info.items() if k in ModelPublic.model_fields}
        out.append(ModelPublic(**fields, default=name == settings.default_model, workers=workers,
                               defunct_workers=len(defunct), queued=jobstore.queue_for(redis, name).count,
                               startup_failures=[_failure(f) for f in startup.failures(redis, name)]))
    served = {m.name: m for m in out}
    default_info = served[settings.default_model].model_dump() if settings.default_model in served else None
    presets = {}
    for name, p in PRESETS.items():
        base = model_defaults(default_info, p.sampler) if default_info else {}
        presets[name] = QualityPreset(sampler=p.sampler, settings=dict(p.values),
                                      evaluations=p.settings(base).evaluations, budget=p.budget,
                                      description=p.description)
    samplers = [SamplerPublic(**cls.describe()) for cls in SETTINGS.values()]
    return ModelList(default=settings.default_model, models=out, samplers=samplers, default_sampler=DEFAULT_SAMPLER,
                     presets=presets, output_formats=output_formats.describe(), strategies=list(STRATEGIES),
                     job_statuses={status.value: status.final for status in JobStatus},
                     unavailable={name: UnavailableModel(reason=u["reason"], workers=u["workers"],
                                                         startup_failures=[_failure(f) for f in u["startup_failures"]])
                                  for name, u in unavailable.items()})


def _failure(entry: dict) -> StartupFailure:
    return StartupFailure(where=entry["where"], stage=entry["stage"], reason=entry["reason"],
                          since=jobstore.iso(entry["since"]))


def _png_data_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


@router.get("/models/{name}/example", response_model=ModelExample, summary="An example input for a model",
            responses={404: {"model": ErrorBody, "description": "unknown model, or none we have an example for"}})
def model_example(name: str, redis: RedisDep, settings: SettingsDep) -> ModelExample:
    """A picture like the model's training images and a mask over something to fill, as PNG data
    URLs, with the POST /inpaint fields to send them with; what `repaint example` writes. 404 for a
    diffusers folder whose domain we have no picture for (only an honest example is offered)."""
    served = jobstore.served_models(redis, settings)
    if name not in served:
        raise HTTPException(404, f"unknown model {name!r}; available: {sorted(served)}")
    info = {"name": name, **served[name]}
    ex = example_for_model(info)
    if ex is None:
        raise HTTPException(404, why_no_example(info))
    return ModelExample(model=name, width=ex.image.width, height=ex.image.height, image=_png_data_url(ex.image),
                        mask=_png_data_url(ex.mask), form=ex.form, shows=ex.shows, hides=ex.hides, notes=ex.notes)
