"""The resident model: loaded once when the worker starts, kept across jobs."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

import models

from . import geometry
from .imaging import from_model_range, to_model_range
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
    strategy: str = "auto"
    blend: int | None = None  # None: about one model pixel (see geometry.auto_blend)
    mask_dilate: int = 0
    output_format: str = "png"

    @classmethod
    def from_dict(cls, d: dict) -> "JobParams":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample."""
        return models.count_model_evaluations(models.jump_schedule(self.steps, self.jump_length, self.jump_n_sample))

    def sample_params(self) -> list[models.SampleParams]:
        """One SampleParams per sample; sample i uses seed + i."""
        return [models.SampleParams(t_T=self.steps, jump_length=self.jump_length, jump_n_sample=self.jump_n_sample,
                                    seed=self.seed + i, class_label=self.class_label,
                                    classifier_scale=self.classifier_scale) for i in range(self.num_samples)]


@dataclass
class PreparedJob:
    """A job's upload as the worker holds it: the original, the mask to fill, the model's view."""

    original: Image.Image
    fill: np.ndarray       # [H x W] bool at the original size, dilated
    plan: geometry.Plan
    image: torch.Tensor    # [3 x S x S] uint8, the model's input
    keep: torch.Tensor     # [S x S] bool, True = known model pixel


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
        self.autocast_dtype = None if settings.autocast == "none" else DTYPES[settings.autocast]
        self.max_batch = settings.max_batch or (16 if self.device.type == "cuda" else 8)
        log.info("loaded model %s on %s (%s) in %.1fs; max_batch %d", preset.name, self.device, self.dtype,
                 time.perf_counter() - t0, self.max_batch)
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

    # ---- one job's data ----------------------------------------------------------------------

    def prepare(self, image_png: bytes, mask_png: bytes, params: JobParams) -> PreparedJob:
        """Decode the stored upload and plan the model's square view of it (any size and mode)."""
        try:
            original = Image.open(io.BytesIO(image_png))
            original.load()
            fill = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L")) >= 128  # white = to fill
        except Exception as exc:
            raise JobInputError(f"stored upload is unreadable: {exc}") from exc
        if fill.shape != (original.height, original.width):
            raise JobInputError("mask and image sizes differ")
        if self.preset.class_cond and params.class_label is None:
            raise JobInputError(f"model {self.preset.name} is class-conditional: class_label is required")
        if not self.preset.class_cond and params.class_label is not None:
            raise JobInputError(f"model {self.preset.name} is not class-conditional: omit class_label")
        if params.class_label is not None and not 0 <= params.class_label < 1000:
            raise JobInputError(f"class_label {params.class_label} is out of range")
        fill = geometry.dilate(fill, params.mask_dilate)
        if not fill.any():
            raise JobInputError("the mask selects no pixel")
        try:
            plan = geometry.plan(original.width, original.height, fill, self.preset.image_size, params.strategy)
        except ValueError as exc:
            raise JobInputError(str(exc)) from exc
        rgb, keep = geometry.model_input(original, fill, plan)
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
        return PreparedJob(original=original, fill=fill, plan=plan, image=image, keep=torch.from_numpy(keep))

    def add_samples(self, batch: models.RePaintBatch, prepared: PreparedJob, params: JobParams) -> list:
        n = params.num_samples
        x = to_model_range(prepared.image).to(self.device)[None].expand(n, -1, -1, -1)
        masks = prepared.keep.to(self.device)[None, None].expand(n, -1, -1, -1).float()
        try:
            return batch.add(x, masks, params.sample_params())
        except ValueError as exc:
            raise JobInputError(str(exc)) from exc

    def encode(self, out: torch.Tensor, prepared: PreparedJob, params: JobParams) -> list[bytes]:
        """The results at the upload's size and mode; only masked pixels differ from the upload."""
        pixels = from_model_range(out.float()).cpu()
        # Known model pixels are the model input's, exactly, before scaling back.
        pixels = torch.where(prepared.keep.expand_as(prepared.image), prepared.image, pixels)
        results = []
        for p in pixels:
            blend = geometry.auto_blend(prepared.plan) if params.blend is None else params.blend
            composed = geometry.compose(prepared.original, p.permute(1, 2, 0).numpy(), prepared.fill,
                                        prepared.plan, blend)
            results.append(geometry.encode(composed, params.output_format))
        return results

    def preview_png(self, x0: torch.Tensor) -> bytes:
        """A [3 x S x S] estimate in [-1, 1] as a PNG (the model's view of the job)."""
        out = io.BytesIO()
        Image.fromarray(from_model_range(x0.float()).cpu().permute(1, 2, 0).numpy()).save(out, format="PNG")
        return out.getvalue()

    # ---- the network ---------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self, batch: models.RePaintBatch) -> int:
        """One network evaluation for every unfinished sample; updates the measured speed."""
        t0 = time.perf_counter()
        limit = self.settings.test_oom_above
        if limit is not None and sum(not s.done for s in batch.states) > limit:
            raise torch.OutOfMemoryError(f"simulated: more than {limit} samples in one forward pass")
        with self._autocast():
            ran = models.step(self.net, batch, classifier=self.loaded.classifier)
        if ran:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._measure(time.perf_counter() - t0, ran)
        return ran

    def inpaint(self, image_png: bytes, mask_png: bytes, params: JobParams,
                progress: ProgressFn | None = None) -> list[bytes]:
        """Run one job alone to the end: `num_samples` encoded images (for scripts and tests)."""
        prepared = self.prepare(image_png, mask_png, params)
        with torch.inference_mode():
            batch = models.RePaintBatch(self.loaded.diffusion, device=self.device)
            states = self.add_samples(batch, prepared, params)
            total = states[0].total_evaluations
            done = 0
            while not batch.done:
                self.step(batch)
                done += 1
                if progress is not None:
                    progress(done, total, batch.pred_xstart)
            return self.encode(batch.result(), prepared, params)

    def is_out_of_memory(self, exc: BaseException | None) -> bool:
        return exc is not None and (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower())

    def release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _measure(self, seconds: float, sample_evaluations: int) -> None:
        """Seconds per evaluation of one sample, smoothed: for ETAs and job timeouts."""
        per = seconds / max(sample_evaluations, 1)
        old = self.seconds_per_evaluation
        self.seconds_per_evaluation = per if old is None else 0.95 * old + 0.05 * per
