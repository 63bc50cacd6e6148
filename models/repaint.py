"""RePaint sampling (Lugmayr et al., CVPR 2022) as a batch of independent samples.

Every sample in a `RePaintBatch` carries its own jump schedule, position, image, keep-mask,
random generator, class label and guidance scale. `step` advances every unfinished sample by
exactly one network evaluation (the re-noising moves in between cost none), so samples at
different timesteps, from different step counts and jump settings, share one forward pass.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from .diffusion import COEFFICIENTS, Diffusion, gather_coefficients, p_mean_variance
from .schedule import count_model_evaluations, jump_schedule


_BETA = COEFFICIENTS.index("beta")


class DenoiseModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True, kw_only=True)
class SampleParams:
    """What one sample asks for: its schedule, seed and (class-conditional models) guidance."""

    t_T: int = 250
    jump_length: int = 10
    jump_n_sample: int = 10
    seed: int
    class_label: int | None = None
    classifier_scale: float = 0.0


def random_seed() -> int:
    """A fresh seed, reported back to clients so that any result can be reproduced."""
    return secrets.randbits(62)


class SampleState:
    """One sample's progress through its own jump schedule."""

    def __init__(self, params: SampleParams, diffusion: Diffusion, device: torch.device):
        if not 1 <= params.t_T <= diffusion.config.diffusion_steps:
            raise ValueError(f"t_T must be between 1 and {diffusion.config.diffusion_steps}, got {params.t_T}")
        self.params = params
        self.times = jump_schedule(params.t_T, params.jump_length, params.jump_n_sample)
        self.total_evaluations = count_model_evaluations(self.times)
        self.rows = diffusion.coefficient_rows(params.t_T)
        self.position = 0
        self.evaluations = 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(params.seed)

    @property
    def current(self) -> int:
        """The respaced index of the sample's current state (-1: finished)."""
        return self.times[self.position]

    @property
    def done(self) -> bool:
        return self.current == -1

    def randn(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=device)


class RePaintBatch:
    """Samples in flight; tensors are [N x C x H x W] on one device, one row per sample.

    `gt` holds the known image in [-1, 1], `keep` is True where a pixel is known, `x` is each
    sample's current noisy state and `pred_xstart` its latest estimate of the clean image.
    Samples join with `add` and leave with `remove` (a copy at join and leave, none per step),
    so a serving loop can admit new work between steps without waiting for the batch to drain.
    """

    def __init__(self, diffusion: Diffusion, images: torch.Tensor | None = None,
                 keep_masks: torch.Tensor | None = None, params: Sequence[SampleParams] = (), *,
                 device: torch.device | str | None = None):
        self.diffusion = diffusion
        self.device = torch.device(device) if device is not None else (
            images.device if images is not None else torch.device("cpu"))
        self.states: list[SampleState] = []
        self.gt = self.keep = self.x = self.pred_xstart = None
        self.y: torch.Tensor | None = None
        if images is not None:
            self.add(images, keep_masks, params)

    def __len__(self) -> int:
        return len(self.states)

    @property
    def done(self) -> bool:
        return all(s.done for s in self.states)

    def add(self, images: torch.Tensor, keep_masks: torch.Tensor, params: Sequence[SampleParams]) -> list[SampleState]:
        """Append samples ([N x C x H x W] in [-1, 1], keep masks, one SampleParams each)."""
        assert images.ndim == 4 and len(params) == images.shape[0], (images.shape, len(params))
        gt = images.to(self.device, torch.float32)
        keep = _as_keep(keep_masks.to(self.device), gt)
        states = [SampleState(p, self.diffusion, self.device) for p in params]
        labels = [s.params.class_label for s in self.states + states]
        if any(label is None for label in labels) and any(label is not None for label in labels):
            raise ValueError("either every sample in a batch has a class label or none has")
        if self.gt is not None and gt.shape[1:] != self.gt.shape[1:]:
            raise ValueError(f"images of shape {tuple(gt.shape[1:])} cannot join a batch of {tuple(self.gt.shape[1:])}")
        # x_T ~ N(0, I), drawn from each sample's own generator.
        x = torch.stack([s.randn(gt.shape[1:], self.device) for s in states])
        join = (lambda old, new: new if old is None else torch.cat([old, new]))
        self.gt, self.keep, self.x = join(self.gt, gt), join(self.keep, keep), join(self.x, x)
        self.pred_xstart = join(self.pred_xstart, torch.zeros_like(x))
        self.states.extend(states)
        self._labels_changed(labels)
        return states

    def remove(self, leaving: Sequence[SampleState]) -> None:
        """Drop samples (finished, failed or canceled) from the batch."""
        leaving_ids = {id(s) for s in leaving}
        rows = [i for i, s in enumerate(self.states) if id(s) not in leaving_ids]
        if len(rows) == len(self.states):
            return
        self.states = [self.states[i] for i in rows]
        if not rows:
            self.gt = self.keep = self.x = self.pred_xstart = self.y = None
            return
        index = torch.tensor(rows, device=self.device)
        self.gt, self.keep, self.x, self.pred_xstart = (
            t.index_select(0, index) for t in (self.gt, self.keep, self.x, self.pred_xstart))
        self._labels_changed([s.params.class_label for s in self.states])

    def _labels_changed(self, labels: list[int | None]) -> None:
        self.y = None if not labels or labels[0] is None else torch.tensor(labels, dtype=torch.int64, device=self.device)

    def rows_of(self, states: Sequence[SampleState]) -> list[int]:
        position = {id(s): i for i, s in enumerate(self.states)}
        return [position[id(s)] for s in states]

    def result(self, states: Sequence[SampleState] | None = None) -> torch.Tensor:
        """The images of `states` (default: all) with the known pixels pasted back bit for bit."""
        if states is None:
            return torch.where(self.keep, self.gt, self.x)
        index = torch.tensor(self.rows_of(states), device=self.device)
        return torch.where(self.keep.index_select(0, index), self.gt.index_select(0, index),
                           self.x.index_select(0, index))

    def estimate(self, states: Sequence[SampleState]) -> torch.Tensor:
        """The current x0 estimates of `states`, for previews."""
        return self.pred_xstart.index_select(0, torch.tensor(self.rows_of(states), device=self.device))


def _as_keep(keep_masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if keep_masks.ndim == 3:
        keep_masks = keep_masks[:, None]
    if keep_masks.shape[0] != images.shape[0] or keep_masks.shape[2:] != images.shape[2:]:
        raise ValueError(f"keep mask {tuple(keep_masks.shape)} does not match images {tuple(images.shape)}")
    return (keep_masks > 0.5).expand_as(images).to(images.device)


def _renoise(batch: RePaintBatch, slot: int, state: SampleState) -> None:
    """Forward moves a -> a + 1 up to the next reverse step: x <- sqrt(1 - b) x + sqrt(b) z."""
    while state.position + 1 < len(state.times) and state.times[state.position + 1] > state.current:
        beta = state.rows[state.current + 1][_BETA]
        noise = state.randn(batch.x.shape[1:], batch.device)
        batch.x[slot] = (1 - beta) ** 0.5 * batch.x[slot] + beta ** 0.5 * noise
        state.position += 1


def classifier_gradient(classifier: Callable, x: torch.Tensor, t: torch.Tensor,
                        y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * grad_x log p(y | x_t), the classifier guidance of Dhariwal & Nichol (2021)."""
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t.clone()).float(), dim=-1)
        selected = log_probs[torch.arange(len(y), device=y.device), y.clone()]
        return torch.autograd.grad(selected.sum(), x_in)[0] * scale.clone()


def step(model: DenoiseModel, batch: RePaintBatch, *, classifier: Callable | None = None,
         clip_denoised: bool = True) -> int:
    """Advance every unfinished sample by one network evaluation; returns how many ran.

    Implements one pass of Algorithm 1's inner loop for each sample: known pixels from the
    original noised to the sample's level, unknown ones from its current x; one denoising
    step over the merged image; re-noising jumps (no evaluation) before the next reverse step.
    """
    slots = []
    for slot, state in enumerate(batch.states):
        _renoise(batch, slot, state)
        if not state.done:
            slots.append(slot)
    if not slots:
        return 0
    states = [batch.states[i] for i in slots]
    # The noise of this step is drawn before the network runs. If the pass fails (out of memory,
    # and the worker retries with a smaller batch), the generators go back to where they were, so
    # the retry draws the same noise: a seeded result never depends on a failed attempt.
    saved = [s.generator.get_state() for s in states]
    try:
        return _reverse_step(model, batch, slots, states, classifier=classifier, clip_denoised=clip_denoised)
    except BaseException:
        for s, state in zip(states, saved):
            s.generator.set_state(state)
        raise


def _reverse_step(model: DenoiseModel, batch: RePaintBatch, slots: list[int], states: list[SampleState], *,
                  classifier: Callable | None, clip_denoised: bool) -> int:
    """One network evaluation for `states` (at rows `slots` of the batch); see `step`."""
    everyone = len(slots) == len(batch)
    index = None if everyone else torch.tensor(slots, device=batch.device)

    def take(t: torch.Tensor) -> torch.Tensor:
        return t if index is None else t.index_select(0, index)

    fresh = [s.evaluations == 0 for s in states]
    c = gather_coefficients([s.rows[s.current] for s in states], batch.device, extra={
        "nonzero": [float(s.current != 0) for s in states],
        "inject_known": [float(not f) for f in fresh],
        "guidance": [float(s.params.classifier_scale) for s in states]})
    shape = batch.x.shape[1:]
    noise = torch.stack([s.randn(shape, batch.device) for s in states])
    x = take(batch.x)
    # Line 4-6 of Algorithm 1: x_{t-1}^known = q_sample(x0, t). The reference noises the known
    # region to the level of the *input* x_t (alphas_cumprod[t]), from the second step on.
    if not all(fresh):
        gt_noise = torch.stack([torch.zeros(shape, device=batch.device) if f else s.randn(shape, batch.device)
                                for s, f in zip(states, fresh)])
        known = c["sqrt_ac"] * take(batch.gt) + c["sqrt_1m_ac"] * gt_noise
        merge = take(batch.keep)
        if any(fresh):
            merge = merge & (c["inject_known"] > 0.5)
        x = torch.where(merge, known, x)
    y = None if batch.y is None else take(batch.y)
    out = p_mean_variance(batch.diffusion, model(x, c["timestep"], y), x, c, clip_denoised=clip_denoised)
    mean = out["mean"]
    if classifier is not None and y is not None:
        if any(s.params.classifier_scale for s in states):
            gradient = classifier_gradient(classifier, x, c["timestep"], y, c["guidance"])
            mean = mean.float() + out["variance"] * gradient
    sample = mean + c["nonzero"] * torch.exp(0.5 * out["log_variance"]) * noise
    if index is None:
        batch.x, batch.pred_xstart = sample, out["pred_xstart"]
    else:
        batch.x.index_copy_(0, index, sample)
        batch.pred_xstart.index_copy_(0, index, out["pred_xstart"])
    for s in states:
        s.position += 1
        s.evaluations += 1
    return len(states)


ProgressFn = Callable[[int, int, torch.Tensor], None]


def inpaint(model: DenoiseModel, diffusion: Diffusion, image: torch.Tensor, keep_mask: torch.Tensor, *,
            t_T: int = 250, jump_length: int = 10, jump_n_sample: int = 10, seed: int | None = None,
            y: torch.Tensor | Sequence[int] | int | None = None, classifier: Callable | None = None,
            classifier_scale: float = 0.0, progress: ProgressFn | None = None) -> torch.Tensor:
    """Fill the unknown pixels of `image` ([N x C x H x W] in [-1, 1]; keep_mask 1 = known).

    Sample i uses seed `seed + i`, so a sample's output does not depend on its batch. Returns
    [N x C x H x W] with the known pixels equal to the input's. `progress(step, total, x0)` is
    called after every network evaluation with the current estimate of the clean images.
    """
    if seed is None:
        seed = random_seed()
    n = image.shape[0]
    labels: list[int | None]
    if y is None:
        labels = [None] * n
    elif isinstance(y, int):
        labels = [y] * n
    else:
        labels = [int(v) for v in (y.tolist() if isinstance(y, torch.Tensor) else y)]
    params = [SampleParams(t_T=t_T, jump_length=jump_length, jump_n_sample=jump_n_sample, seed=seed + i,
                           class_label=labels[i], classifier_scale=classifier_scale) for i in range(n)]
    with torch.inference_mode():
        batch = RePaintBatch(diffusion, image, keep_mask, params)
        total = batch.states[0].total_evaluations
        done = 0
        while not batch.done:
            step(model, batch, classifier=classifier)
            done += 1
            if progress is not None:
                progress(done, total, batch.pred_xstart)
        return batch.result()
