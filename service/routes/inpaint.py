"""POST /inpaint: validate the upload, store it in Redis, queue a job for a model worker."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import secrets
from dataclasses import fields
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Request, Response, UploadFile, status

from models.sampler_settings import DEFAULT_SAMPLER, SETTINGS, all_parameter_names, owners_of
from worker import output_formats
from worker.jobs import JobStatus
from worker.ledger import Admission, IdempotencyConflict, Refused, new_job_id
from worker.params import (STRATEGIES, JobParams, ParamError, check_class_label, check_output_size,
                           expected_result_bytes, resolve_sampling)
from worker.presets import PRESETS
from worker.webhooks_policy import EVENTS as WEBHOOK_EVENTS
from worker.webhooks_policy import WebhookPolicy, WebhookRefused

from .. import jobstore, uploads
from ..deps import ApiKey, CallerDep, LedgerDep, RedisDep, SettingsDep
from ..schemas import ErrorBody, JobCreated, Links
from ..tenancy import Tenant

log = logging.getLogger("repaint.api")

# Seeds stay below 2^53 so that JavaScript clients (the page) read them back exactly.
MAX_SEED = 2**53

# The form fields of POST /inpaint besides the samplers' parameters (a test checks them against
# the endpoint's schema); every parameter of every registered sampler is a field too.
BASE_FORM_FIELDS = frozenset({
    "image", "mask", "model", "seed", "num_samples", "preset", "sampler", "class_label", "classifier_scale",
    "strategy", "blend", "mask_dilate", "output_format", "webhook", "webhook_events"})


def form_fields() -> frozenset[str]:
    """Every form field POST /inpaint takes, the registered samplers' parameters included."""
    return BASE_FORM_FIELDS | all_parameter_names()


def sampler_parameters() -> list[inspect.Parameter]:
    """Each registered sampler's parameters as optional form fields, in the registry's order, so a
    new sampler needs no change here: which of them a request may send depends on its sampler
    (worker.params.resolve_sampling refuses the others)."""
    out: dict[str, inspect.Parameter] = {}
    for cls in SETTINGS.values():
        for f in fields(cls):
            if f.name in out:
                continue
            owners = owners_of(f.name)
            who = "every sampler" if len(owners) == len(SETTINGS) else "sampler " + ", ".join(owners)
            kind = float if isinstance(f.default, float) else int
            description = f"{f.metadata['doc']} ({who}; GET /models lists its range and default)"
            out[f.name] = inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[kind | None, Form(description=description)])
    return list(out.values())


def make_router() -> APIRouter:
    """The POST /inpaint route, its form made from the samplers registered now (models.sampler_settings)."""
    router = APIRouter(tags=["jobs"], dependencies=[ApiKey])
    known = form_fields()

    async def refuse_unknown_fields(request: Request) -> None:
        """A misspelt field (`stpes`) would otherwise be ignored and the default used silently.
        The form is already parsed (and cached on the request) by the time this runs."""
        form = await request.form()
        unknown = sorted(set(form.keys()) - known)
        if unknown:
            raise HTTPException(422, f"unknown form field(s) {unknown}; the fields are {sorted(known)}")

    def endpoint(**kwargs: Any) -> JobCreated:
        return create_inpaint_job(**kwargs)

    # FastAPI reads the form from the signature: the fixed fields, then the samplers' parameters.
    fixed = [q.replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for q in inspect.signature(create_inpaint_job).parameters.values() if q.kind != q.VAR_KEYWORD]
    at = [q.name for q in fixed].index("sampler") + 1
    endpoint.__signature__ = inspect.Signature(fixed[:at] + sampler_parameters() + fixed[at:])  # type: ignore[attr-defined]
    endpoint.__name__ = endpoint.__qualname__ = "create_inpaint_job"
    router.add_api_route(
        "/inpaint", endpoint, methods=["POST"], status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated,
        responses=RESPONSES, summary="Queue an inpainting job", dependencies=[Depends(refuse_unknown_fields)],
        description=("Upload an image and a mask (or an image whose transparent pixels are the region to fill); "
                     "the job waits in its model's queue for a worker. Each sampler's parameters are form fields: "
                     "send only those of the sampler the job runs (GET /models lists them, with their ranges)."))
    return router


RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    404: {"model": ErrorBody, "description": "unknown model"},
    409: {"model": ErrorBody, "description": "Idempotency-Key reused with a different upload"},
    429: {"model": ErrorBody, "description": "the model's queue, or the API key's waiting jobs, are at their limit; "
                                             "see Retry-After"},
    503: {"model": ErrorBody, "description": "the model cannot be served now (why: its workers' startup failure), "
                                             "busy decoding other uploads, or Redis unavailable; see Retry-After"},
    507: {"model": ErrorBody, "description": "the job store (Redis) is full; see Retry-After"},
    413: {"model": ErrorBody, "description": "upload or image too large"},
    415: {"model": ErrorBody, "description": "not a PNG, JPEG or WebP"},
    422: {"model": ErrorBody, "description": "invalid image, mask or parameter"}}


def create_inpaint_job(
    redis: RedisDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    tenant: CallerDep,
    request: Request,
    response: Response,
    image: Annotated[UploadFile, File(description="PNG, JPEG or WebP image")],
    mask: Annotated[UploadFile | None, File(description="same size as the image; white (>50%) = region to "
                                                     "fill. Optional for images with transparency: then the "
                                                     "transparent pixels are filled")] = None,
    model: Annotated[str | None, Form(description="model name (GET /models); default: the service's")] = None,
    seed: Annotated[int | None, Form(ge=0, lt=MAX_SEED, description="random seed; drawn if omitted")] = None,
    num_samples: Annotated[int, Form(ge=1, description="independent results, seeds seed..seed+n-1")] = 1,
    preset: Annotated[str | None, Form(description=f"quality preset: {', '.join(PRESETS)} (GET /models lists them, "
                                                    "with their sampler and cost); explicit sampler parameters "
                                                    "override its values")] = None,
    sampler: Annotated[str | None, Form(description=f"sampler: {', '.join(SETTINGS)} (default: {DEFAULT_SAMPLER}, "
                                                     "or the preset's); GET /models lists each one's "
                                                     "parameters")] = None,
    class_label: Annotated[int | None, Form(ge=0, description="class for class-conditional models")] = None,
    classifier_scale: Annotated[float | None, Form(ge=0, le=100, description="classifier guidance scale")] = None,
    strategy: Annotated[Literal[STRATEGIES], Form(description=(  # type: ignore[valid-type]
        "how an image of another size reaches the model: crop around the mask, resize the whole "
        "(padded) image, or auto"))] = "auto",
    blend: Annotated[int | None, Form(ge=0, le=64, description=(
        "soft band, in pixels, outside the mask edge where the fill fades into the image; nothing under the "
        "mask is ever used (default: about one model pixel, at least 2)"))] = None,
    mask_dilate: Annotated[int, Form(ge=0, le=64, description="grow the mask by this many pixels")] = 0,
    output_format: Annotated[output_formats.OutputFormatName, Form(description=(
        "result format; only the lossless ones (GET /models: output_formats) keep the pixels beyond the "
        "blend band bit for bit"))] = output_formats.DEFAULT,
    webhook: Annotated[str | None, Form(max_length=2000, description=(
        "URL to POST job events to (hosts the operator allows); signed with HMAC-SHA256"))] = None,
    webhook_events: Annotated[str, Form(description="comma-separated: started, progress, completed")] = (
        "started,progress,completed"),
    idempotency_key: Annotated[str | None, Header(max_length=200, description=(
        "client retries with the same key and upload get the same job instead of a new one"))] = None,
    **sampler_fields: int | float | None,
) -> JobCreated:
    """Queue a job; the samplers' parameters arrive in `sampler_fields` (see `make_router`)."""
    requested_model = model  # as sent: a retry must not depend on the service's default
    model = model or settings.default_model
    return _create(redis, ledger, settings, tenant, request, response, image, mask, requested_model, model,
                   sampler_fields, seed, num_samples, preset, sampler, class_label, classifier_scale, strategy,
                   blend, mask_dilate, output_format, webhook, webhook_events, idempotency_key)


def _create(redis, ledger, settings, tenant: Tenant, request: Request, response: Response, image: UploadFile,
            mask: UploadFile | None, requested_model, model, sampler_fields, seed, num_samples, preset, sampler,
            class_label, classifier_scale, strategy, blend, mask_dilate, output_format, webhook, webhook_events,
            idempotency_key) -> JobCreated:
    # The files first: their size limits hold for every request, and a replay needs their bytes.
    image_bytes = uploads.read_limited(image.file, settings.max_upload_bytes, "image")
    mask_bytes = b"" if mask is None else uploads.read_limited(mask.file, settings.max_upload_bytes, "mask")
    events = sorted({e.strip() for e in webhook_events.split(",") if e.strip()})
    idempotency = None
    if idempotency_key is not None:
        # Every field that changes the job, as the client sent it, and the files' bytes.
        request_fields = {"model": requested_model, "seed": seed, "num_samples": num_samples, "preset": preset,
                          "sampler": sampler, **sampler_fields, "class_label": class_label, "classifier_scale": classifier_scale, "strategy": strategy,
                          "blend": blend, "mask_dilate": mask_dilate, "output_format": output_format,
                          "webhook": webhook, "webhook_events": events if webhook is not None else None}
        digest = hashlib.sha256(image_bytes)
        digest.update(hashlib.sha256(mask_bytes).digest())
        digest.update(json.dumps(request_fields, sort_keys=True).encode())
        # Keys are scoped to the caller's tenant: one client cannot collide with another's.
        idempotency = (f"{tenant.name}:{idempotency_key}", digest.hexdigest(), settings.idempotency_ttl)
        # A retry of a request that was accepted gets its job back before any admission check:
        # a full queue or a changed setting must not turn a client's retry into an error.
        try:
            replayed_id = ledger.replay(idempotency[0], idempotency[1])
        except IdempotencyConflict:
            raise HTTPException(409, "this Idempotency-Key was used for a different upload or parameters") from None
        if replayed_id is not None:
            return _created(response, replayed_id, ledger, replayed=True)

    served = jobstore.served_models(redis, settings)
    info = served.get(model)
    # A model whose every worker failed to start (or that nothing here can describe) would keep the
    # job waiting forever: refuse it with the reason instead.
    problem = jobstore.unavailable_reason(redis, settings, model, live_entry=info is not None)
    if problem is not None:
        raise HTTPException(503, problem, headers={"Retry-After": "30"})
    if info is None:
        raise HTTPException(404, f"unknown model {model!r}; available: {sorted(served)}")
    if num_samples > settings.max_num_samples:
        raise HTTPException(422, f"num_samples must be at most {settings.max_num_samples}")
    try:
        sampling = resolve_sampling(info, preset=preset, sampler=sampler, fields=sampler_fields,
                                    max_evaluations=settings.max_evaluations)
        classifier_scale = check_class_label(info, class_label, classifier_scale)
    except ParamError as exc:
        raise HTTPException(422, str(exc)) from None
    hook = None if webhook is None else {"url": _checked_webhook(webhook, events, request.app.state.webhooks),
                                         "events": events}

    prepared = _decoded(request, settings, image, mask, image_bytes, mask_bytes)
    try:
        check_output_size(output_format, prepared.width, prepared.height)
    except ParamError as exc:
        raise HTTPException(422, str(exc)) from None

    params = JobParams(seed=secrets.randbits(52) if seed is None else seed, num_samples=num_samples, sampler=sampling,
                       class_label=class_label if info["class_cond"] else None,
                       classifier_scale=classifier_scale, strategy=strategy, blend=blend,
                       mask_dilate=mask_dilate, output_format=output_format, preset=preset, webhook=hook,
                       image={"width": prepared.width, "height": prepared.height, "mode": prepared.mode})
    admission = Admission(
        tenant=tenant.name, weight=tenant.weight, max_queue=settings.max_queue_length,
        tenant_max_queued=settings.tenant_max_queued, tenant_max_running=settings.tenant_max_running,
        admit_fraction=settings.redis_admit_fraction,
        reserve_bytes=expected_result_bytes(output_format, prepared.width, prepared.height, prepared.mode,
                                            num_samples, int(info.get("image_size", 256))))
    try:
        job_id, replayed = ledger.create(
            job_id=new_job_id(), model=model, params=params, image=prepared.image_bytes,
            mask_png=prepared.mask_png, timeout=jobstore.job_timeout(redis, settings, model, params.evaluations),
            input_ttl=settings.input_ttl, max_attempts=settings.max_attempts, admission=admission,
            idempotency=idempotency)
    except IdempotencyConflict:
        raise HTTPException(409, "this Idempotency-Key was used for a different upload or parameters") from None
    except Refused as exc:
        raise _refusal(exc, model, tenant) from None
    if not replayed:
        log.info("job %s queued for tenant %s on model %s (%d bytes stored, %d reserved)", job_id, tenant.name,
                 model, len(prepared.image_bytes) + len(prepared.mask_png), admission.reserve_bytes)
    return _created(response, job_id, ledger, replayed=replayed)


def _decoded(request: Request, settings, image: UploadFile, mask: UploadFile | None, image_bytes: bytes,
             mask_bytes: bytes) -> uploads.PreparedUpload:
    """The upload checked and its mask made, inside the process's pixel budget: decoding is what
    costs the API memory, so the request holds its pixels (read from the files' headers, nothing
    decoded yet) in the budget while it decodes, and only then."""
    pixels = min(uploads.header_pixels(io.BytesIO(image_bytes))
                 + (0 if mask is None else uploads.header_pixels(io.BytesIO(mask_bytes))),
                 2 * settings.max_image_pixels)
    try:
        with request.app.state.pixels.hold(pixels, settings.pixel_budget_wait):
            img = uploads.open_image(image_bytes, "image", settings.max_image_pixels)
            msk = None if mask is None else uploads.open_image(mask_bytes, "mask", settings.max_image_pixels)
            return uploads.prepare(image_bytes, img, msk)  # the bytes as sent and the small mask: no pixels
    except uploads.BudgetBusy:
        raise HTTPException(503, f"the service is decoding {settings.pixel_budget} pixels of other uploads; "
                                 "retry shortly", headers={"Retry-After": "2"}) from None


def _refusal(exc: Refused, model: str, tenant: Tenant) -> HTTPException:
    """The client's answer when admission refused a job: which bound, where it stands."""
    if exc.reason == "queue_full":
        return HTTPException(429, f"the queue of model {model} is full ({exc.limit} jobs, "
                                  "REPAINT_MAX_QUEUE_LENGTH); retry later", headers={"Retry-After": "30"})
    if exc.reason == "tenant_full":
        return HTTPException(429, f"API key {tenant.name!r} has {exc.current} jobs waiting, its limit "
                                  f"(REPAINT_TENANT_MAX_QUEUED={exc.limit}); retry when some have started",
                             headers={"Retry-After": "30"})
    return HTTPException(507, f"the job store is full: Redis holds {exc.current} bytes and {exc.reserved} are "
                              f"reserved for the results of accepted jobs, of the {exc.limit} it may fill "
                              "(REPAINT_REDIS_ADMIT_FRACTION of its maxmemory); retry once jobs have finished",
                         headers={"Retry-After": "60"})


def _checked_webhook(url: str, events: list[str], policy: WebhookPolicy) -> str:
    """The webhook URL if this service may call it (see worker.webhooks_policy), else a 422."""
    if not policy.enabled:
        raise HTTPException(422, f"webhooks are not enabled on this service: {policy.disabled_reason}")
    unknown = set(events) - set(WEBHOOK_EVENTS)
    if unknown or not events:
        raise HTTPException(422, f"webhook_events must be among {list(WEBHOOK_EVENTS)}")
    try:
        policy.check(url)
    except WebhookRefused as exc:
        raise HTTPException(422, f"webhook refused: {exc}") from None
    return url


def _created(response: Response, job_id: str, ledger, replayed: bool = False) -> JobCreated:
    response.headers["Location"] = f"/jobs/{job_id}"
    status_now = JobStatus.QUEUED.value
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
        # The job's status now (it may have run since the first answer); a record already
        # expired leaves the job's first status.
        record = ledger.read(job_id)
        status_now = record["status"] if record else status_now
    return JobCreated(id=job_id, status=status_now, links=Links(self=f"/jobs/{job_id}", result=f"/jobs/{job_id}/result"))
