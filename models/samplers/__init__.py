"""The samplers' update math, by name: one module per sampler (settings: models.sampler_settings).

A sampler is three functions over a `Rows` view of the batch (the caller owns the forward pass,
so samples of different samplers share it):
- `move_up(batch, slot, state)`: the moves up the schedule that need no network (re-noising);
- `network_input(rows) -> x`: draws the step's noise and builds the rows' network input;
- `update(rows, x_in, model_output, classifier=, clip_denoised=) -> (x_next, x0_estimate)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

import torch

from . import ddnm, repaint

if TYPE_CHECKING:
    from ..sampling import SampleBatch, SampleState

Sampler = ModuleType

SAMPLERS: Mapping[str, Sampler] = {"repaint": repaint, "ddnm": ddnm}


@dataclass
class Rows:
    """The samples of one sampler in one forward pass.

    `slots` are their rows in the batch (`index` the same as a tensor, None when they are every
    row); `pass_index` their positions in the pass (None when they are the whole pass); `c` their
    coefficients [n x 1 x 1 x 1]. `scratch` keeps what `network_input` drew for `update`.
    """

    batch: "SampleBatch"
    slots: list[int]
    states: list["SampleState"]
    index: torch.Tensor | None
    pass_index: torch.Tensor | None
    c: Mapping[str, torch.Tensor]
    scratch: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, batch, slots, states, index, pass_index, c) -> "Rows":
        return cls(batch=batch, slots=slots, states=states, index=index, pass_index=pass_index, c=c)

    @property
    def sampler(self) -> Sampler:
        return self.states[0].sampler

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """These rows of a batch tensor."""
        return t if self.index is None else t.index_select(0, self.index)

    @property
    def labels(self) -> torch.Tensor | None:
        return None if self.batch.y is None else self.take(self.batch.y)

    def noise(self) -> torch.Tensor:
        """One standard normal draw per row, each from its sample's own generator."""
        shape = self.batch.x.shape[1:]
        return torch.stack([s.randn(shape, self.batch.device) for s in self.states])
