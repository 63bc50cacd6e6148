"""The resident model: loaded once when the worker starts, kept across jobs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

import models

from .imaging import from_model_range, png_to_uint8, to_model_range, uint8_to_png
from .settings import WorkerSettings

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class JobInputError(ValueError):
    """Job data the model cannot use (wrong size, unknown class): fails that job only."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, preset: models.Preset) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" and preset.conf.get("use_fp16") else torch.float32
    return DTYPES[name]


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

    @classmethod
    def from_dict(cls, d: dict) -> "JobParams":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample."""
        return models.count_model_evaluations(models.jump_schedule(self.steps, self.jump_length, self.jump_n_sample))


ProgressFn = Callable[[int, int, torch.Tensor], None]


class Runtime:
    """A preset's networks on one device, plus the measured speed of one evaluation."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        preset = models.get_preset(settings.model)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device, preset)
        t0 = time.perf_counter()
        self.loaded = models.load_preset(preset, checkpoint=settings.checkpoint,
                                         classifier_checkpoint=settings.classifier_checkpoint,
                                         device=self.device, dtype=self.dtype)
        self.net = self.loaded.unet
        if settings.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if settings.compile:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            self.net = torch.compile(self.net, dynamic=True)
        log.info("loaded model %s on %s (%s) in %.1fs", preset.name, self.device, self.dtype,
                 time.perf_counter() - t0)
        self.seconds_per_evaluation: float | None = None

    @property
    def preset(self) -> models.Preset:
        return self.loaded.preset

    def describe(self) -> dict:
        """What the API needs to know of this model: no torch on the API side."""
        p = self.preset
        d = p.defaults
        return {
            "name": p.name, "description": p.description, "image_size": p.image_size,
            "class_cond": p.class_cond, "num_classes": 1000 if p.class_cond else None,
            "classifier": self.loaded.classifier is not None,
            "diffusion_steps": self.loaded.diffusion.config.diffusion_steps,
            "defaults": {"steps": d.t_T, "jump_length": d.jump_length, "jump_n_sample": d.jump_n_sample,
                         "classifier_scale": float(p.conf.get("classifier_scale", 0.0)) if p.class_cond else 0.0},
        }

    def check(self, params: JobParams, image: torch.Tensor) -> None:
        size = self.preset.image_size
        if tuple(image.shape[1:]) != (size, size):
            raise JobInputError(f"model {self.preset.name} needs {size}x{size} images, got "
                                f"{image.shape[2]}x{image.shape[1]}")
        if self.preset.class_cond and params.class_label is None:
            raise JobInputError(f"model {self.preset.name} is class-conditional: class_label is required")
        if not self.preset.class_cond and params.class_label is not None:
            raise JobInputError(f"model {self.preset.name} is not class-conditional: omit class_label")

    def inpaint(self, image_png: bytes, mask_png: bytes, params: JobParams,
                progress: ProgressFn | None = None) -> list[bytes]:
        """Run one job: returns `num_samples` PNGs whose known pixels are the uploaded ones."""
        image = png_to_uint8(image_png, "RGB")
        fill = png_to_uint8(mask_png, "L") >= 128  # white = region to fill
        self.check(params, image)
        n = params.num_samples
        keep = (~fill).to(self.device)
        x = to_model_range(image).to(self.device)[None].expand(n, -1, -1, -1)
        y = None if params.class_label is None else [params.class_label] * n
        t0 = time.perf_counter()
        out = models.inpaint(
            self.net, self.loaded.diffusion, x, keep[None].expand(n, -1, -1, -1).float(), t_T=params.steps,
            jump_length=params.jump_length, jump_n_sample=params.jump_n_sample, seed=params.seed, y=y,
            classifier=self.loaded.classifier, classifier_scale=params.classifier_scale, progress=progress)
        self._measure(time.perf_counter() - t0, params.evaluations * n)
        pixels = from_model_range(out.float()).cpu()
        # Paste the uploaded bytes back: known pixels must be bit-exact after the float trip.
        pixels = torch.where(keep.cpu().expand_as(pixels[0]), image, pixels)
        return [uint8_to_png(p) for p in pixels]

    def release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _measure(self, seconds: float, sample_evaluations: int) -> None:
        per = seconds / max(sample_evaluations, 1)
        old = self.seconds_per_evaluation
        self.seconds_per_evaluation = per if old is None else 0.7 * old + 0.3 * per
