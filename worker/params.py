"""Job parameters: one definition, one evaluation counter, one set of rules, shared by API and worker.

Torch-free on purpose (the API imports it). The API resolves a request into a `JobParams` with
`resolve_sampling` and stores `JobParams.to_record()`; the worker reads it back with
`JobParams.from_record` and checks it against the model it serves with `check_for_model`.
Both sides raise the same `ParamError` with the same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from models.sampler_settings import (DEFAULT_SAMPLER, SETTINGS, SamplerSettings, SettingsError, owners_of,
                                     settings_class, settings_from_record)

from .output_formats import OUTPUT_FORMATS
from .presets import PRESETS

# How an image of another size reaches the model (worker.geometry.plan): crop around the mask,
# resize the whole (padded) image, or auto.
STRATEGIES = ("auto", "crop", "resize")

# Fewer than 2 steps cannot be sampled: the fixed-variance schedules (faces32, tiny) take their
# first variance from the second step, and one step of a diffusion model is noise anyway.
MIN_STEPS = 2



class ParamError(ValueError):
    """Parameters that no worker can run for this model: a 422 at the API, `invalid_input` on a worker."""


def count_evaluations(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Network evaluations per sample of a one-level RePaint jump schedule, without building it.

    Every step is evaluated once, and each of the stretches that start below
    `steps - jump_length` is redone `jump_n_sample - 1` more times (equal to counting
    `models.jump_schedule`; a test checks it). Schedules with more levels are counted by
    `SamplerSettings.evaluations`.
    """
    stretches = len(range(0, steps - jump_length, jump_length))
    return steps + (jump_n_sample - 1) * jump_length * stretches


# The RePaint paper's setting (250 steps, jumps of 10, 10 resamplings): what images per hour are quoted in.
PAPER_EVALUATIONS = count_evaluations(250, 10, 10)  # 2,410


@dataclass(frozen=True)
class JobParams:
    """What a job asks for, as the API resolved it (seed always set)."""

    seed: int
    sampler: SamplerSettings
    num_samples: int = 1
    class_label: int | None = None
    classifier_scale: float = 0.0
    strategy: str = "auto"
    blend: int | None = None  # None: about one model pixel (see worker.geometry.auto_blend)
    mask_dilate: int = 0
    output_format: str = "png"
    preset: str | None = None
    webhook: dict | None = None
    image: dict = field(default_factory=dict)  # {"width", "height", "mode"} of the upload

    @property
    def steps(self) -> int:
        return self.sampler.steps

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample."""
        return self.sampler.evaluations

    @property
    def total_evaluations(self) -> int:
        return self.evaluations * self.num_samples

    @classmethod
    def from_record(cls, d: dict) -> "JobParams":
        """Read back `to_record()` (records without `sampler` are RePaint's: queued before samplers)."""
        own = {f.name for f in fields(cls)} - {"sampler"}
        return cls(sampler=settings_from_record(d), **{k: d[k] for k in own if k in d})

    def to_record(self) -> dict[str, Any]:
        """The `params` the job record stores and `GET /jobs/<id>` shows (unset optional fields left out):
        the sampler's name and every one of its settings, flat, then the job's other fields."""
        out = self.sampler.to_record()
        out.update({k: v for k, v in asdict(self).items() if k not in (
            "sampler", "preset", "webhook", "class_label", "classifier_scale", "image")})
        out["evaluations_per_sample"] = self.evaluations
        out["image"] = self.image
        if self.preset is not None:
            out["preset"] = self.preset
        if self.webhook is not None:
            out["webhook"] = self.webhook
        if self.class_label is not None:
            out.update(class_label=self.class_label, classifier_scale=self.classifier_scale)
        return out


def check_class_label(info: dict, class_label: int | None, classifier_scale: float | None) -> float:
    """The class-label rules of a model description; returns the guidance scale to use."""
    name = info["name"]
    if info["class_cond"]:
        if class_label is None:
            raise ParamError(f"model {name} is class-conditional: class_label is required")
        if not 0 <= class_label < info["num_classes"]:
            raise ParamError(f"class_label must be below {info['num_classes']}")
        if classifier_scale is None:
            classifier_scale = info["defaults"].get("classifier_scale", 0.0) if info.get("classifier") else 0.0
        if classifier_scale and not info.get("classifier"):
            raise ParamError(f"model {name} is served without a classifier: classifier_scale must be 0")
        return float(classifier_scale)
    if class_label is not None or classifier_scale:
        raise ParamError(f"model {name} is not class-conditional: omit class_label and classifier_scale")
    return 0.0


def model_defaults(info: dict, sampler: str) -> dict[str, Any]:
    """A model's default settings for a sampler: the model's own (its conf's t_T, jump_length, ...)
    for a sampler that takes them (`takes_model_defaults`), none for the others."""
    cls = settings_class(sampler)
    if not cls.takes_model_defaults:
        return {}
    d = info["defaults"]
    return {k: d[k] for k in cls.parameter_names() if k in d}


def resolve_sampling(info: dict, *, preset: str | None, sampler: str | None,
                     fields: Mapping[str, int | float | None], max_evaluations: int) -> SamplerSettings:
    """The sampler and its settings: explicit fields, over the preset's, over the model's defaults.

    Fields that belong to another sampler are refused, never ignored: a client who sends
    `eta` to RePaint would otherwise get a result that silently did not use it.
    """
    explicit = {k: v for k, v in fields.items() if v is not None}
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ParamError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        chosen = PRESETS[preset]
        if sampler is not None and sampler != chosen.sampler:
            raise ParamError(f"preset {preset} uses sampler {chosen.sampler}, not {sampler}: "
                             f"send the preset or the sampler")
        name = chosen.sampler
        base = dict(chosen.values)
    else:
        name = sampler or DEFAULT_SAMPLER
    try:
        cls = settings_class(name)
    except SettingsError as exc:
        raise ParamError(str(exc)) from None
    base = {**model_defaults(info, name), **base}
    misplaced = sorted(k for k in explicit if k not in cls.parameter_names())
    if misplaced:
        raise ParamError("; ".join(f"{k} is a parameter of sampler {', '.join(owners_of(k))}, not of {name}"
                                   for k in misplaced))
    try:
        settings = cls(**{**base, **explicit})
        check_steps(settings.steps, info)
        settings.evaluations_within(max_evaluations)
    except SettingsError as exc:
        raise ParamError(str(exc)) from None
    return settings


def check_for_model(params: JobParams, info: dict) -> None:
    """What a worker re-checks before running a job (the model it serves may differ from the API's view)."""
    check_class_label(info, params.class_label, params.classifier_scale)
    check_steps(params.steps, info)
    if params.sampler.name not in SETTINGS:
        raise ParamError(f"unknown sampler {params.sampler.name!r}")


def check_steps(steps: int, info: dict) -> None:
    if steps < MIN_STEPS:
        raise ParamError(f"steps must be at least {MIN_STEPS}")
    if steps > info["diffusion_steps"]:
        raise ParamError(f"steps must be at most {info['diffusion_steps']} for model {info['name']}")


def check_output_size(output_format: str, width: int, height: int) -> None:
    """Whether a result of this size can be written in this format (results keep the upload's size)."""
    # Results have the upload's size, so an upload past the encoder's limit is refused at submit.
    limit = OUTPUT_FORMATS[output_format].max_side
    if max(width, height) > limit:
        raise ParamError(f"{output_format} results can be at most {limit} pixels wide and high; this image is "
                         f"{width}x{height}: choose output_format=png")


CHANNELS = {"L": 1, "LA": 2, "I": 2, "I;16": 2, "P": 3, "RGB": 3, "RGBA": 4}


def expected_result_bytes(output_format: str, width: int, height: int, mode: str, num_samples: int,
                          model_size: int) -> int:
    """Room a job's results (and its preview) may take in Redis: what admission keeps free for it
    until it finishes, so that an accepted job can always store what it made."""
    values = width * height * CHANNELS.get(mode, 3)
    per_result = int(values * OUTPUT_FORMATS[output_format].bytes_per_value) + 4096
    preview = model_size * model_size * 3 + 4096
    return num_samples * per_result + preview
