"""The samplers' update math: one `Sampler` subclass per sampler, found from its settings.

A sampler is two things, each defined once:
- its settings (models.sampler_settings): a torch-free dataclass with the parameters, their rules
  and the schedule, which the API validates requests with, and which names its math in
  `implementation` ("module:Class");
- its math: a `Sampler` here, three methods over a `Rows` view of the batch (the caller owns the
  forward pass, so samples of different samplers share it).
Registering the settings class (`models.sampler_settings.register`) is the one registry line:
the API's form, GET /models, the page, the CLI and the worker all read the registry.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch

from ..sample_batch import SampleBatch, SampleState
from ..sampler_settings import SamplerSettings, settings_class


class Sampler(abc.ABC):
    """The update math of one sampler (stateless: per-sample state lives in the batch)."""

    # The settings class this math runs (its `implementation` names this class).
    settings: ClassVar[type[SamplerSettings]]

    @abc.abstractmethod
    def move_up(self, batch: SampleBatch, slot: int, state: SampleState) -> None:
        """The moves up the schedule that need no network (re-noising), for the sample in row `slot`,
        from `state.current` to `state.next`; advances `state.position` past them."""

    @abc.abstractmethod
    def network_input(self, rows: "Rows") -> torch.Tensor:
        """Draw the step's noise (into `rows.scratch`) and build the rows' network input."""

    @abc.abstractmethod
    def update(self, rows: "Rows", x_in: torch.Tensor, model_output: torch.Tensor, *,
               classifier: Callable | None, clip_denoised: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_next, x0 estimate) for the rows, from the network's output on `x_in`."""


_INSTANCES: dict[type[SamplerSettings], Sampler] = {}


def sampler_for(settings: SamplerSettings | type[SamplerSettings] | str) -> Sampler:
    """The math of a sampler, from its settings (an instance, the class or its name)."""
    cls = settings_class(settings) if isinstance(settings, str) else (
        settings if isinstance(settings, type) else type(settings))
    sampler = _INSTANCES.get(cls)
    if sampler is None:
        module, _, name = cls.implementation.partition(":")
        math = getattr(importlib.import_module(module), name)
        if not (isinstance(math, type) and issubclass(math, Sampler)) or math.settings is not cls:
            raise TypeError(f"{cls.implementation} is not the Sampler of {cls.__name__}")
        sampler = _INSTANCES[cls] = math()
    return sampler


@dataclass
class Rows:
    """The samples of one sampler in one forward pass.

    `slots` are their rows in the batch (`index` the same as a tensor, None when they are every
    row); `pass_index` their positions in the pass (None when they are the whole pass); `c` their
    coefficients [n x 1 x 1 x 1]. `scratch` keeps what `network_input` drew for `update`.
    """

    batch: SampleBatch
    slots: list[int]
    states: list[SampleState]
    index: torch.Tensor | None
    pass_index: torch.Tensor | None
    c: Mapping[str, torch.Tensor]
    scratch: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, batch, slots, states, index, pass_index, c) -> "Rows":
        return cls(batch=batch, slots=slots, states=states, index=index, pass_index=pass_index, c=c)

    @property
    def sampler(self) -> Sampler:
        return sampler_for(self.states[0].params.sampler)

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
