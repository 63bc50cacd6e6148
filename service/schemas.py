"""Response schemas, named by role."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Links(BaseModel):
    self: str
    result: str | None = None
    results: list[str] | None = None


class JobCreated(BaseModel):
    id: str = Field(description="unguessable job id (uuid4)")
    status: str
    links: Links


class Progress(BaseModel):
    step: int = Field(description="network evaluations done per sample")
    total: int
    fraction: float
    eta_seconds: float | None = None
    updated_at: float | None = None


class JobError(BaseModel):
    type: str
    message: str


class WebhookState(BaseModel):
    event: str = Field(description="the event of the latest delivery: started, progress or completed")
    state: str = Field(description="delivered | retrying | failed (gave up) | refused (address not allowed "
                       "at delivery time) | dropped (the host's queue was full)")
    last_status: int | None = Field(description="HTTP status of the latest attempt (null: no response)")
    attempts: int = Field(description="attempts made for this event")
    error: str | None = None
    at: float = Field(description="when this state was recorded (Unix time)")
    delivery_id: str | None = Field(None, description="the delivery's id, the same on every attempt (the body's "
                                    "`delivery_id` and the `webhook-id` header): receivers deduplicate on it")


class JobPublic(BaseModel):
    id: str
    status: str = Field(description="queued | running | succeeded | failed | canceled")
    model: str
    tenant: str = Field(description="the name of the API key that created the job ('anonymous' on a service "
                        "without keys)")
    position: int | None = Field(None, description="0-based place in the model's queue while queued (null "
                                 "while the job waits for its tenant's running limit)")
    progress: Progress | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = Field(0, description="times a worker has started this job")
    failures: int = Field(0, description="attempts lost to a lost worker or an infrastructure error; the job "
                          "fails when they reach the service's REPAINT_MAX_ATTEMPTS")
    cancel_requested: bool = Field(False, description="DELETE was called; a running job stops at its next step")
    params: dict[str, Any] = Field(description="the parameters used, seed included")
    error: JobError | None = None
    last_error: JobError | None = Field(None, description="why an earlier attempt did not finish (job retried)")
    plan: dict[str, Any] | None = Field(None, description="how the worker fitted the image to the model: "
                                        "strategy used, square region (box) and scale")
    webhook: WebhookState | None = Field(None, description="the latest webhook delivery, for jobs with a webhook")
    links: Links


class ModelDefaults(BaseModel):
    """The model's own RePaint schedule (its conf's `schedule_jump_params`) and guidance scale."""

    steps: int
    jump_length: int
    jump_n_sample: int
    n_sample: int = 1
    classifier_scale: float = 0.0


class StartupFailure(BaseModel):
    where: str = Field(description="the worker's REPAINT_WORKER_NAME, else its host")
    stage: Literal["load", "self-test"] = Field(description="load: the weights or folder; self-test: the first "
                                                "forward pass")
    reason: str
    since: str = Field(description="when this failure first came (ISO 8601); a worker restarted in a loop renews it")


class UnavailableModel(BaseModel):
    reason: str = Field(description="one line: why jobs for this model are refused (503) now")
    workers: int = Field(description="live workers serving it (0)")
    startup_failures: list[StartupFailure] = Field(default_factory=list)


class ModelPublic(BaseModel):
    name: str
    description: str
    image_size: int
    class_cond: bool
    num_classes: int | None = None
    classifier: bool = False
    diffusion_steps: int
    framing: str = Field("region", description="whole: trained on whole subjects (faces), so strategy=auto "
                         "resizes the whole image; region: strategy=auto crops around the mask when it can")
    domain: str = Field("", description="what the model was trained on: the images it can fill well")
    photographic: bool | None = Field(None, description="true: trained on photographs; false: on drawings or "
                                      "generated pictures, so a photograph gives a meaningless fill; null: not known")
    provenance: str = Field("", description="where the weights come from")
    licence: str = Field("", description="the terms of the weights, as far as the service knows them")
    source: Literal["preset", "diffusers"] = Field("preset", description="preset: a built-in model; diffusers: "
                                                   "a diffusers model folder")
    defaults: ModelDefaults
    default: bool = Field(description="used when POST /inpaint names no model")
    workers: int = Field(description="live workers serving this model (0: jobs wait until one starts)")
    defunct_workers: int = Field(0, description="workers of this model that declared themselves broken and "
                                 "exited within the last hour (details: /readyz)")
    queued: int = Field(description="jobs waiting in this model's queue")
    startup_failures: list[StartupFailure] = Field(default_factory=list, description=(
        "workers that could not start serving this model, and why (a worker that starts clears its own)"))


class QualityPreset(BaseModel):
    sampler: str = Field(description="the sampler the preset runs")
    settings: dict[str, int | float] = Field(description="the sampler parameters the preset sets (a model's "
                                             "defaults fill the rest)")
    evaluations: int = Field(description="network evaluations per sample (with the default model's defaults)")
    budget: int | None = Field(description="the most evaluations the preset may cost (null: any)")
    description: str


class SamplerParameter(BaseModel):
    name: str
    type: Literal["integer", "number"]
    default: int | float
    minimum: int | float | None = None
    maximum: int | float | None = None
    description: str
    advanced: bool = Field(False, description="rarely changed (the page shows it under 'more')")


class SamplerPublic(BaseModel):
    name: str = Field(description="the value of POST /inpaint's `sampler` field")
    description: str
    parameters: list[SamplerParameter] = Field(description="the form fields this sampler takes; sending a "
                                               "parameter of another sampler is refused (422)")
    schedule: dict[str, str | int] = Field(description=(
        "how the sampler walks the diffusion: each argument of the jump schedule (models/schedule.py: n_sample, "
        "jump_length, jump_n_sample, jump2_length, jump2_n_sample, jump3_length, jump3_n_sample, "
        "start_resampling), from the parameter named here or fixed at the number given; the evaluation count "
        "of a setting follows from it"))
    takes_model_defaults: bool = Field(description=(
        "the model's own defaults (a model's `defaults`) replace this sampler's for the parameters both name"))


class OutputFormatPublic(BaseModel):
    media_type: str
    suffix: str = Field(description="the file suffix of a result in this format")
    max_side: int = Field(description="the largest side a result can have: larger uploads are refused at submit")
    lossless: bool


class ModelList(BaseModel):
    default: str
    models: list[ModelPublic]
    samplers: list[SamplerPublic] = Field(description="samplers for POST /inpaint sampler=")
    default_sampler: str = Field(description="the sampler a job runs when it names neither a sampler nor a preset")
    presets: dict[str, QualityPreset] = Field(description="named sampling settings for POST /inpaint preset=")
    output_formats: dict[str, OutputFormatPublic] = Field(
        default_factory=dict, description="POST /inpaint output_format= values, each with its media type and file suffix")
    strategies: list[str] = Field(default_factory=list, description="POST /inpaint strategy= values")
    unavailable: dict[str, UnavailableModel] = Field(default_factory=dict, description=(
        "models this service is asked to serve that cannot take jobs now, with why: every worker that tried "
        "failed to start them (their jobs are refused with 503 and this reason)"))
    job_statuses: dict[str, bool] = Field(default_factory=dict, description=(
        "every status a job can have (GET /jobs/<id>), in order, each with whether it is final"))


class ModelExample(BaseModel):
    """An input suited to a model: a picture like its training images and a mask, ready to submit."""

    model: str
    width: int
    height: int
    image: str = Field(description="the picture, a data: URL of a PNG (RGB)")
    mask: str = Field(description="the mask, a data: URL of a PNG (L, 0 or 255; white = fill), same size")
    form: dict[str, int | str] = Field(description="POST /inpaint fields the example needs (strategy, class_label)")
    shows: str = Field(description="what the picture is")
    hides: str = Field(description="what the mask covers")
    notes: list[str] = Field(description="what to expect; says so when the picture is only a stand-in")


class ErrorBody(BaseModel):
    detail: Any
