"""The shared step of a batch of samples, each with its own sampler, and `inpaint` around it.

`step` advances every unfinished sample of a `SampleBatch` (models.sample_batch) by exactly one
network evaluation: each sampler (models.samplers) builds its samples' network input, one forward
pass serves them all, and each sampler applies its own update to its rows. Moves up the schedule
(re-noising) cost no evaluation and happen in between.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from .diffusion import Diffusion, gather_coefficients
from .sample_batch import SampleBatch, SampleParams, SampleState, random_seed
from .sampler_settings import RePaintSettings, SamplerSettings
from .samplers import Rows, sampler_for


class DenoiseModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...


def step(model: DenoiseModel, batch: SampleBatch, *, classifier: Callable | None = None,
         clip_denoised: bool = True) -> int:
    """Advance every unfinished sample by one network evaluation; returns how many ran.

    First each sample makes the moves up its schedule that need no network (its sampler's
    re-noising), then the samples due a reverse step share one forward pass.
    """
    slots = []
    for slot, state in enumerate(batch.states):
        if not state.done and state.next > state.current:
            sampler_for(state.params.sampler).move_up(batch, slot, state)
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
