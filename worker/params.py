"""Job parameters: one definition, one evaluation counter, one set of rules, shared by API and worker.

Torch-free on purpose (the API imports it). The API resolves a request into a `JobParams` with
`resolve_sampling` and stores `JobParams.to_record()`; the worker reads it back with
`JobParams.from_record` and checks it against the model it serves with `check_for_model`.
Both sides raise the same `ParamError` with the same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Named sampling settings (`preset=` on POST /inpaint), chosen from the quality table in
# docs/quality.md. Explicit steps/jump_length/jump_n_sample override a preset's values.
QUALITY_PRESETS: dict[str, dict[str, int]] = {
    "fast": {"steps": 50, "jump_length": 5, "jump_n_sample": 3},
    "balanced": {"steps": 100, "jump_length": 10, "jump_n_sample": 5},
    "paper": {"steps": 250, "jump_length": 10, "jump_n_sample": 10},
}


# Fewer than 2 steps cannot be sampled: the fixed-variance schedules (faces32, tiny) take their
# first variance from the second step, and one step of a diffusion model is noise anyway.
MIN_STEPS = 2

# The largest side each output encoder can write (WebP: 14-bit sizes; libjpeg: 65500 pixels).
# Results have the upload's size, so an upload past these is refused at submit, not after sampling.
MAX_OUTPUT_SIDE = {"png": 2**31 - 1, "jpeg": 65500, "webp": 16383}


class ParamError(ValueError):
    """Parameters that no worker can run for this model: a 422 at the API, `invalid_input` on a worker."""


def count_evaluations(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Network evaluations per sample of a RePaint jump schedule, without building it.

    Every step is evaluated once, and each of the stretches that start below
    `steps - jump_length` is redone `jump_n_sample - 1` more times (equal to counting
    `models.jump_schedule`; a test checks it).
    """
    stretches = len(range(0, steps - jump_length, jump_length))
    return steps + (jump_n_sample - 1) * jump_length * stretches


@dataclass(frozen=True)
class JobParams:
    """What a job asks for, as the API resolved it (seed always set)."""

    seed: int
    steps: int
    jump_length: int
    jump_n_sample: int
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
    def evaluations(self) -> int:
        """Network evaluations per sample."""
        return count_evaluations(self.steps, self.jump_length, self.jump_n_sample)

    @property
    def total_evaluations(self) -> int:
        return self.evaluations * self.num_samples

    @classmethod
    def from_record(cls, d: dict) -> "JobParams":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_record(self) -> dict[str, Any]:
        """The `params` the job record stores and `GET /jobs/<id>` shows (unset optional fields left out)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("preset", "webhook", "class_label",
                                                                   "classifier_scale", "image")}
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


def resolve_sampling(info: dict, *, preset: str | None, steps: int | None, jump_length: int | None,
                     jump_n_sample: int | None, max_evaluations: int) -> dict[str, int]:
    """steps/jump_length/jump_n_sample from explicit fields, else the preset, else the model's defaults."""
    defaults = dict(info["defaults"])
    if preset is not None:
        if preset not in QUALITY_PRESETS:
            raise ParamError(f"unknown preset {preset!r}; known: {sorted(QUALITY_PRESETS)}")
        defaults.update(QUALITY_PRESETS[preset])
    out = {"steps": steps or defaults["steps"], "jump_length": jump_length or defaults["jump_length"],
           "jump_n_sample": jump_n_sample or defaults["jump_n_sample"]}
    check_steps(out["steps"], info)
    evaluations = count_evaluations(**out)
    if evaluations > max_evaluations:
        raise ParamError(f"these settings need {evaluations} network evaluations per sample; "
                         f"the limit is {max_evaluations}")
    return out


def check_for_model(params: JobParams, info: dict) -> None:
    """What a worker re-checks before running a job (the model it serves may differ from the API's view)."""
    check_class_label(info, params.class_label, params.classifier_scale)
    check_steps(params.steps, info)


def check_steps(steps: int, info: dict) -> None:
    if steps < MIN_STEPS:
        raise ParamError(f"steps must be at least {MIN_STEPS}")
    if steps > info["diffusion_steps"]:
        raise ParamError(f"steps must be at most {info['diffusion_steps']} for model {info['name']}")


def check_output_size(output_format: str, width: int, height: int) -> None:
    """Whether a result of this size can be written in this format (results keep the upload's size)."""
    limit = MAX_OUTPUT_SIDE[output_format]
    if max(width, height) > limit:
        raise ParamError(f"{output_format} results can be at most {limit} pixels wide and high; this image is "
                         f"{width}x{height}: choose output_format=png")
