"""A batch of independent inpainting samples in flight: the data a sampler step works on.

Every sample in a `SampleBatch` carries its own sampler settings (RePaint, DDNM, ...), time
schedule, position, image, keep-mask, random generator, class label and guidance scale. The step
that advances them is `models.sampling.step`; the samplers' update math is `models.samplers`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .diffusion import Diffusion
from .sampler_settings import RePaintSettings, SamplerSettings


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
