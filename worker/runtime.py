"""The resident model: loaded once when the worker starts, kept across jobs."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

import models

from . import blending, compiling, decoding, encoding, geometry, speed
from .cuda_graphs import GraphedNetwork
from .imaging import from_model_range, to_model_range
from .params import JobParams, ParamError, check_for_model, check_output_size
from .settings import WorkerSettings

log = logging.getLogger(__name__)

# The longer side of preview images (results keep the upload's size; previews need not).
PREVIEW_SIDE = 1024

class JobInputError(ValueError):
    """Job data the model cannot use (wrong size, unknown class): fails that job only."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sample_params(params: JobParams) -> list[models.SampleParams]:
    """One SampleParams per sample of a job; sample i uses seed + i."""
    return [models.SampleParams(sampler=params.sampler, seed=params.seed + i, class_label=params.class_label,
                                classifier_scale=params.classifier_scale) for i in range(params.num_samples)]


@dataclass
class PreparedJob:
    """A job's upload as the worker holds it: the original, the mask to fill, the model's view."""

    original: Image.Image
    fill: np.ndarray       # [H x W] bool at the original size, dilated
    plan: geometry.Plan
    image: torch.Tensor    # [3 x S x S] uint8, the model's input
    keep: torch.Tensor     # [S x S] bool, True = known model pixel
    # Made once per job, on first use: the band's weights, and the preview's small copy of the
    # image, mask and plan (previews come every few seconds; large photos are costly to shrink).
    weights: dict = field(default_factory=dict)
    preview_view: tuple | None = None


ProgressFn = Callable[[int, int, torch.Tensor], None]


class Runtime:
    """A preset's networks on one device, plus the measured speed of one evaluation."""

    def __init__(self, settings: WorkerSettings, *, compile_fn: compiling.CompileFn | None = None):
        self.settings = settings
        preset = models.resolve_model(settings.model)  # a bad folder stops the worker here, with the reason
        if preset.diffusers is not None and (settings.checkpoint or settings.classifier_checkpoint):
            raise models.CheckpointError(f"REPAINT_CHECKPOINT and REPAINT_CLASSIFIER_CHECKPOINT are for presets: the "
                                         f"weights of {preset.name} are in its folder {preset.diffusers.folder}")
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = resolve_device(settings.device)
        self.max_batch = settings.max_batch or (16 if self.device.type == "cuda" else 8)
        self.speed = speed.plan_for(settings, self.device, preset, self.max_batch)
        self.dtype = self.speed.dtype
        t0 = time.perf_counter()
        self.loaded = models.load_preset(preset, checkpoint=settings.checkpoint,
                                         classifier_checkpoint=settings.classifier_checkpoint,
                                         device=self.device, dtype=self.dtype)
        self.net = self.loaded.unet
        if self.speed.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.autocast_dtype = self.speed.autocast
        # REPAINT_CUDA_GRAPHS: every shape a pass can have, captured before it is served
        # (worker.cuda_graphs): the eager network's now, when it is what serves; the compiled
        # one's on the compile thread.
        self._graphed: GraphedNetwork | None = None
        if self.speed.cuda_graphs and self.device.type == "cuda" and not self.speed.compile:
            self._graphed = GraphedNetwork(self.net, capture_on_call=False)
            self._capture(self._graphed)
        log.info("loaded model %s on %s in %.1fs; max_batch %d; %s", preset.name, self.device,
                 time.perf_counter() - t0, self.max_batch, self.speed.describe())
        # REPAINT_COMPILE: the eager network serves until the compiled one is warm (worker.compiling).
        self.compiler: compiling.BackgroundCompile | None = None
        if self.speed.compile:
            half = self.dtype != torch.float32 or self.autocast_dtype is not None
            buckets = self.speed.buckets
            if compile_fn is None and buckets:
                compile_fn = functools.partial(compiling.compile_per_batch_size, sizes=len(buckets))
            self.compiler = compiling.BackgroundCompile(
                self.net, self._example_inputs, batch_sizes=compiling.warm_up_batch_sizes(self.max_batch, buckets),
                compile_fn=compile_fn, context=self._autocast, atol=5e-2 if half else 1e-2,
                finish=self._graph_compiled if self.speed.cuda_graphs and self.device.type == "cuda" else None)
            self.compiler.start()

    def _pass_sizes(self) -> tuple[int, ...]:
        """Every batch size a served pass can have: the buckets, else 1..max_batch."""
        return self.speed.buckets or tuple(range(1, self.max_batch + 1))

    def _capture(self, graphed: GraphedNetwork) -> None:
        t0 = time.perf_counter()
        sizes = graphed.capture_all(self._example_inputs, self._pass_sizes(), self._autocast)
        log.info("CUDA graphs captured for batch %s in %.1fs%s", ",".join(map(str, sizes)) or "none",
                 time.perf_counter() - t0, f" ({graphed.failed}: serving without)" if graphed.failed else "")

    def _graph_compiled(self, compiled: Callable) -> Callable:
        """On the compile thread: the compiled network's graphs, every shape, before it serves."""
        graphed = GraphedNetwork(compiled, capture_on_call=False)
        self._capture(graphed)
        return compiled if graphed.failed else graphed

    def between_jobs(self) -> None:
        """Called with no job in the batch: graphs dropped after running out of memory are captured
        again here, never between two passes of live jobs; so are the eager network's, once a
        background compile has failed and the eager network is what serves for good."""
        if self._eager_serves_for_good() and self._graphed is None:
            self._graphed = GraphedNetwork(self.net, capture_on_call=False)
        for graphed in self._graph_sets():
            if not graphed.graphs and graphed.failed is None:
                self._capture(graphed)

    def _eager_serves_for_good(self) -> bool:
        return (self.speed.cuda_graphs and self.device.type == "cuda" and self.compiler is not None
                and self.compiler.state.startswith(compiling.FAILED))

    def _graph_sets(self) -> list[GraphedNetwork]:
        ready = self.compiler.ready if self.compiler is not None else None
        return [g for g in (self._graphed, ready) if isinstance(g, GraphedNetwork)]

    @property
    def preset(self) -> models.Preset:
        return self.loaded.preset

    def describe(self) -> dict:
        """What the API needs to know of this model: no torch on the API side."""
        return self.preset.describe(classifier=self.loaded.classifier is not None)

    # ---- one job's data ----------------------------------------------------------------------

    def prepare(self, image_bytes: bytes, mask_png: bytes, params: JobParams) -> PreparedJob:
        """Decode the stored upload (the bytes the client sent, decoded as the API checked them)
        and plan the model's square view of it (any size and mode)."""
        try:
            original = decoding.decode(image_bytes)
            fill = np.asarray(Image.open(io.BytesIO(mask_png), formats=["PNG"]).convert("L")) >= 128  # white = fill
        except Exception as exc:
            raise JobInputError(f"stored upload is unreadable: {exc}") from exc
        if fill.shape != (original.height, original.width):
            raise JobInputError("mask and image sizes differ")
        try:
            check_for_model(params, self.describe())
            check_output_size(params.output_format, original.width, original.height)
        except ParamError as exc:
            raise JobInputError(str(exc)) from exc
        fill = geometry.dilate(fill, params.mask_dilate)
        if not fill.any():
            raise JobInputError("the mask selects no pixel")
        try:
            plan = geometry.plan(original.width, original.height, fill, self.preset.image_size, params.strategy,
                                 framing=self.preset.framing)
        except ValueError as exc:
            raise JobInputError(str(exc)) from exc
        rgb, keep = geometry.model_input(original, fill, plan)
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
        return PreparedJob(original=original, fill=fill, plan=plan, image=image, keep=torch.from_numpy(keep))

    def add_samples(self, batch: models.SampleBatch, prepared: PreparedJob, params: JobParams) -> list:
        n = params.num_samples
        x = to_model_range(prepared.image).to(self.device)[None].expand(n, -1, -1, -1)
        masks = prepared.keep.to(self.device)[None, None].expand(n, -1, -1, -1).float()
        try:
            return batch.add(x, masks, sample_params(params))
        except ValueError as exc:
            raise JobInputError(str(exc)) from exc

    def new_batch(self) -> models.SampleBatch:
        return models.SampleBatch(self.loaded.diffusion, device=self.device)

    def result(self, batch: models.SampleBatch, samples: list) -> torch.Tensor:
        with torch.inference_mode():
            return batch.result(samples)

    def estimate_pixels(self, batch: models.SampleBatch, samples: list, prepared: list[PreparedJob]) -> list[np.ndarray]:
        """The current estimate of each sample as its job's model pixels (RGB uint8 [S x S x 3]),
        for previews. Made here, on the serving thread, so that the thread which encodes the
        previews runs no torch op: a torch op on a second thread starts a second OpenMP team, and
        libgomp, counting more threads than cores, then has the serving team sleep and wake at
        every parallel region instead of spinning (2x slower at 2 threads, docs/throughput.md)."""
        with torch.inference_mode():
            estimates = batch.estimate(samples)
            return [self._model_pixels(x[None], job)[0] for x, job in zip(estimates, prepared)]

    def encode(self, out: torch.Tensor, prepared: PreparedJob, params: JobParams) -> list[bytes]:
        """The results at the upload's size and mode; only masked pixels differ from the upload.

        Raises JobInputError when the result cannot be encoded (e.g. WebP past 16383 pixels):
        that is the job's own data, and another attempt would fail the same way."""
        try:
            return self._encode(out, prepared, params)
        except JobInputError:
            raise
        except (ValueError, OSError, MemoryError) as exc:
            raise JobInputError(f"the result cannot be encoded as {params.output_format}: {exc}") from exc

    def _encode(self, out: torch.Tensor, prepared: PreparedJob, params: JobParams) -> list[bytes]:
        results = []
        blend = geometry.auto_blend(prepared.plan) if params.blend is None else params.blend
        if blend not in prepared.weights:
            prepared.weights[blend] = blending.band_weights(prepared.fill, blend)
        for p in self._model_pixels(out, prepared):
            composed = blending.compose(prepared.original, p, prepared.fill, prepared.plan, blend,
                                        weight=prepared.weights[blend])
            results.append(encoding.encode(composed, params.output_format))
        return results

    @staticmethod
    def _model_pixels(out: torch.Tensor, prepared: PreparedJob) -> list[np.ndarray]:
        """[N x 3 x S x S] in [-1, 1] as N RGB uint8 arrays; known model pixels are the model
        input's, exactly, before scaling back."""
        pixels = from_model_range(out.float()).cpu()
        pixels = torch.where(prepared.keep.expand_as(prepared.image), prepared.image, pixels)
        return [p.permute(1, 2, 0).numpy() for p in pixels]

    def preview_png(self, pixels: np.ndarray, prepared: PreparedJob, params: JobParams) -> bytes:
        """A running job's current estimate (its model pixels, from `estimate_pixels`) pasted into
        its image as the result will be, at most PREVIEW_SIDE pixels a side: what the user will
        get, not the model's crop. NumPy and Pillow only: it runs on the reporter's thread."""
        if prepared.preview_view is None:
            prepared.preview_view = self._preview_view(prepared)
        original, fill, plan, factor = prepared.preview_view
        blend = geometry.auto_blend(plan) if params.blend is None else round(params.blend * factor)
        if ("preview", blend) not in prepared.weights:
            prepared.weights[("preview", blend)] = blending.band_weights(fill, blend)
        composed = blending.compose(original, pixels, fill, plan, blend, weight=prepared.weights[("preview", blend)])
        out = io.BytesIO()
        geometry.to_rgb8(composed).save(out, format="PNG")
        return out.getvalue()

    @staticmethod
    def _preview_view(prepared: PreparedJob) -> tuple:
        """(image, mask, plan, factor) scaled so that the image is at most PREVIEW_SIDE a side."""
        original, fill, plan = prepared.original, prepared.fill, prepared.plan
        factor = min(1.0, PREVIEW_SIDE / max(original.size))
        if factor < 1:
            size = (max(1, round(original.width * factor)), max(1, round(original.height * factor)))
            original = geometry.to_rgb8(original).resize(size, Image.Resampling.BILINEAR)
            fill = np.asarray(Image.fromarray(fill.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) > 0
            side = max(1, round(plan.side * factor))
            left, top = round(plan.box[0] * factor), round(plan.box[1] * factor)
            plan = geometry.Plan(plan.strategy, (left, top, left + side, top + side), plan.model_size)
        return original, fill, plan, factor

    # ---- the network ---------------------------------------------------------------------------

    def network(self, cap: int | None = None) -> Callable:
        """The UNet the next forward pass uses: the compiled one once its background compilation
        is warm (REPAINT_COMPILE), else the eager one (guarded while the compiler traces);
        replayed from CUDA graphs (REPAINT_CUDA_GRAPHS), captured before serving. Passes are padded
        to the batch buckets (none above `cap`, the scheduler's limit) only where fixed shapes
        pay: graphs and static compiled code are made per shape, an eager pass would only do
        more work. More samples than `cap` run over several passes."""
        net = self._base_network()
        compiled = self.compiler is not None and self.compiler.ready is not None
        if net is self.net and self._graphed is not None and self._graphed.failed is None:
            net = self._graphed
        if self.speed.buckets and (net is self._graphed or compiled):
            net = speed.BucketedPasses(net, self.speed.buckets, cap)
        elif cap is not None:
            net = speed.BucketedPasses(net, (), cap)  # eager: unpadded, but never past the limit
        return net

    def _base_network(self) -> Callable:
        if self.compiler is None:
            return self.net
        compiled = self.compiler.ready
        if compiled is not None:
            return compiled
        return self._while_compiling(self.net)

    def classifier(self) -> Callable | None:
        """The noisy classifier (eager always), guarded while the UNet compiles."""
        classifier = self.loaded.classifier
        return classifier if classifier is None else self._while_compiling(classifier)

    def _while_compiling(self, net: torch.nn.Module) -> Callable:
        if self.compiler is not None and self.compiler.state == compiling.COMPILING:
            return compiling.EagerWhileCompiling(net)
        return net

    @property
    def compile_state(self) -> str:
        """'eager' (REPAINT_COMPILE off), 'compiling', 'compiled' or 'failed: <reason>'."""
        return compiling.EAGER if self.compiler is None else self.compiler.state

    def _example_inputs(self, n: int) -> tuple:
        """Network inputs of batch size n as the sampler passes them: x float32 [N x C x S x S],
        timesteps int64 [N], class labels int64 [N] for class-conditional models."""
        config = self.loaded.unet.config
        size = self.preset.image_size
        x = torch.randn(n, config.in_channels, size, size, generator=torch.Generator().manual_seed(n))
        t = torch.arange(n, dtype=torch.int64) * 97 % int(self.preset.conf["diffusion_steps"])
        inputs = (x.to(self.device), t.to(self.device))
        if config.num_classes is not None:
            inputs += (torch.arange(n, dtype=torch.int64).to(self.device),)
        return inputs

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # No cast cache: each pass enters its own context (nothing to reuse), and a cached cast
        # would be freed under a captured CUDA graph.
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def step(self, batch: models.SampleBatch, cap: int | None = None) -> int:
        """One network evaluation for every unfinished sample; returns how many ran. `cap`: no
        pass is padded to more samples than this (the scheduler's current limit)."""
        with torch.inference_mode(), self._autocast():
            ran = models.step(self.network(cap), batch, classifier=self.classifier())
        if ran and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so that the caller's clock measures the pass
        return ran

    def inpaint(self, image_png: bytes, mask_png: bytes, params: JobParams,
                progress: ProgressFn | None = None) -> list[bytes]:
        """Run one job alone to the end: `num_samples` encoded images (for scripts and tests)."""
        prepared = self.prepare(image_png, mask_png, params)
        with torch.inference_mode():
            batch = self.new_batch()
            states = self.add_samples(batch, prepared, params)
            total = states[0].total_evaluations
            done = 0
            while not batch.done:
                self.step(batch)
                done += 1
                if progress is not None:
                    progress(done, total, batch.pred_xstart)
            return self.encode(batch.result(), prepared, params)

    def self_test(self) -> None:
        """One forward pass on a blank one-sample batch, before the worker takes any job: a
        device that cannot run the model stops the worker here, before it costs a job an
        attempt (a supervisor restarting a worker on a broken GPU would otherwise charge the
        job at the front of the queue on every restart)."""
        size = self.preset.image_size
        with torch.inference_mode():
            batch = self.new_batch()
            batch.add(torch.zeros(1, 3, size, size, device=self.device),
                      torch.ones(1, 1, size, size, device=self.device),
                      # The model's own default schedule: every preset is known to sample with it.
                      [models.SampleParams(sampler=models.RePaintSettings(steps=self.preset.defaults.t_T,
                                                                          jump_n_sample=1), seed=0,
                                           class_label=0 if self.preset.class_cond else None)])
            with self._autocast():
                # Through the guard: the background compilation (on by default on CUDA) may be tracing.
                models.step(self._while_compiling(self.net), batch, classifier=None)

    def is_out_of_memory(self, exc: BaseException | None) -> bool:
        return exc is not None and (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower())

    def release_memory(self) -> None:
        for graphed in self._graph_sets():
            graphed.reset()  # captured again between jobs (`between_jobs`)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
