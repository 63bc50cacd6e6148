"""A batch of independent inpainting samples, each with its own sampler, and the shared step.

Every sample in a `SampleBatch` carries its own sampler settings (RePaint, DDNM, ...), time
schedule, position, image, keep-mask, random generator, class label and guidance scale. `step`
advances every unfinished sample by exactly one network evaluation: each sampler builds its
samples' network input, one forward pass serves them all, and each sampler applies its own
update to its rows. Moves up the schedule (re-noising) cost no evaluation and happen in between.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from .diffusion import Diffusion, gather_coefficients
from .sampler_settings import RePaintSettings, SamplerSettings
from .samplers import SAMPLERS, Rows, Sampler


class DenoiseModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True, kw_only=True)
class SampleParams:
    """What one sample asks for: its sampler and schedule, seed and (class-conditional) guidance."""

    seed: int
    sampler: SamplerSettings = field(default_factory=RePaintSettings)
    class_label: int | None = None
    classifier_scale: float = 0.0


def random_seed() -> int:
    """A fresh seed, reported back to clients so that any result can be reproduced."""
    return secrets.randbits(62)


class SampleState:
    """One sample's progress through its own schedule."""

    def __init__(self, params: SampleParams, diffusion: Diffusion, device: torch.device):
        steps = params.sampler.steps
        if not 1 <= steps <= diffusion.config.diffusion_steps:
            raise ValueError(f"steps must be between 1 and {diffusion.config.diffusion_steps}, got {steps}")
        self.params = params
        self.sampler: Sampler = SAMPLERS[params.sampler.name]
        self.times = params.sampler.times()
        self.total_evaluations = params.sampler.evaluations
        self.rows = diffusion.coefficient_rows(steps)
        self.position = 0
        self.evaluations = 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(params.seed)

    @property
    def current(self) -> int:
        """The respaced index of the sample's current state (-1: finished)."""
        return self.times[self.position]

    @property
    def next(self) -> int:
        return self.times[self.position + 1]

    @property
    def done(self) -> bool:
        return self.current == -1

    def randn(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=device)


class SampleBatch:
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


def step(model: DenoiseModel, batch: SampleBatch, *, classifier: Callable | None = None,
         clip_denoised: bool = True) -> int:
    """Advance every unfinished sample by one network evaluation; returns how many ran.

    First each sample makes the moves up its schedule that need no network (its sampler's
    re-noising), then the samples due a reverse step share one forward pass.
    """
    slots = []
    for slot, state in enumerate(batch.states):
        if not state.done and state.next > state.current:
            state.sampler.move_up(batch, slot, state)
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
        _reverse_step(model, batch, slots, states, classifier=classifier, clip_denoised=clip_denoised)
    except BaseException:
        for s, state in zip(states, saved):
            s.generator.set_state(state)
        raise
    for s in states:
        s.position += 1
        s.evaluations += 1
    return len(states)


def _reverse_step(model: DenoiseModel, batch: SampleBatch, slots: list[int], states: list[SampleState], *,
                  classifier: Callable | None, clip_denoised: bool) -> None:
    """One network evaluation for `states` (at rows `slots` of the batch); see `step`."""
    index = None if len(slots) == len(batch) else torch.tensor(slots, device=batch.device)
    c = gather_coefficients([s.rows[s.current] for s in states], batch.device, extra={
        "nonzero": [float(s.current != 0) for s in states],
        "first": [float(s.evaluations == 0) for s in states],
        "guidance": [float(s.params.classifier_scale) for s in states]})
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(states):
        groups.setdefault(s.params.sampler.name, []).append(k)
    if len(groups) == 1:
        parts = [Rows.of(batch, slots, states, index, None, c)]
    else:
        parts = []
        for ks in groups.values():
            pos = torch.tensor(ks, device=batch.device)
            sub = [slots[k] for k in ks]
            parts.append(Rows.of(batch, sub, [states[k] for k in ks], torch.tensor(sub, device=batch.device), pos,
                                 {name: v.index_select(0, pos) for name, v in c.items()}))
    # Each sampler draws its noise and builds its rows' input; one pass serves every sampler.
    inputs = [rows.sampler.network_input(rows) for rows in parts]
    if len(parts) == 1:
        x_in = inputs[0]
    else:
        x_in = torch.empty((len(states), *batch.x.shape[1:]), device=batch.device, dtype=batch.x.dtype)
        for rows, part in zip(parts, inputs):
            x_in.index_copy_(0, rows.pass_index, part)
    y = None if batch.y is None else (batch.y if index is None else batch.y.index_select(0, index))
    output = model(x_in, c["timestep"], y)
    for rows, part in zip(parts, inputs):
        out = output if rows.pass_index is None else output.index_select(0, rows.pass_index)
        x, x0 = rows.sampler.update(rows, part, out, classifier=classifier, clip_denoised=clip_denoised)
        if rows.index is None:
            batch.x, batch.pred_xstart = x, x0
        else:
            batch.x.index_copy_(0, rows.index, x)
            batch.pred_xstart.index_copy_(0, rows.index, x0)


ProgressFn = Callable[[int, int, torch.Tensor], None]


def inpaint(model: DenoiseModel, diffusion: Diffusion, image: torch.Tensor, keep_mask: torch.Tensor, *,
            sampler: SamplerSettings | None = None, t_T: int = 250, jump_length: int = 10,
            jump_n_sample: int = 10, seed: int | None = None,
            y: torch.Tensor | Sequence[int] | int | None = None, classifier: Callable | None = None,
            classifier_scale: float = 0.0, progress: ProgressFn | None = None) -> torch.Tensor:
    """Fill the unknown pixels of `image` ([N x C x H x W] in [-1, 1]; keep_mask 1 = known).

    `sampler` picks the sampler and its settings (default: RePaint with t_T, jump_length and
    jump_n_sample). Sample i uses seed `seed + i`, so a sample's output does not depend on its
    batch. Returns [N x C x H x W] with the known pixels equal to the input's.
    `progress(step, total, x0)` is called after every network evaluation with the current
    estimate of the clean images.
    """
    if seed is None:
        seed = random_seed()
    if sampler is None:
        sampler = RePaintSettings(steps=t_T, jump_length=jump_length, jump_n_sample=jump_n_sample)
    n = image.shape[0]
    labels: list[int | None]
    if y is None:
        labels = [None] * n
    elif isinstance(y, int):
        labels = [y] * n
    else:
        labels = [int(v) for v in (y.tolist() if isinstance(y, torch.Tensor) else y)]
    params = [SampleParams(seed=seed + i, sampler=sampler, class_label=labels[i],
                           classifier_scale=classifier_scale) for i in range(n)]
    with torch.inference_mode():
        batch = SampleBatch(diffusion, image, keep_mask, params)
        total = batch.states[0].total_evaluations
        done = 0
        while not batch.done:
            step(model, batch, classifier=classifier)
            done += 1
            if progress is not None:
                progress(done, total, batch.pred_xstart)
        return batch.result()
