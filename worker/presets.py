"""Quality presets (`preset=` on POST /inpaint): one definition, read by the API, the worker, the
CLI, GET /models (and through it the page) and bench.quality.

Torch-free (the API imports it). Each preset is a sampler and the values it sets; a model's own
defaults fill what a preset leaves out, and explicit fields override it. docs/quality.md tells how
each was chosen and checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from models.sampler_settings import SamplerSettings, settings_class


@dataclass(frozen=True)
class QualityPreset:
    name: str
    sampler: str
    values: Mapping[str, int | float] = field(default_factory=dict)
    # Network evaluations per sample the preset was chosen within (None: any cost, or fixed).
    budget: int | None = None
    description: str = ""

    def settings(self, model_defaults: Mapping[str, Any] | None = None) -> SamplerSettings:
        """The preset's sampler settings over a model's defaults for that sampler."""
        return settings_class(self.sampler)(**{**(model_defaults or {}), **self.values})

    def to_record(self) -> dict[str, Any]:
        """`{"sampler": ..., value: ...}`, the form a job record's sampler fields take."""
        return {"sampler": self.sampler, **self.values}


PRESETS: Mapping[str, QualityPreset] = {p.name: p for p in (
    QualityPreset("fast", "ddnm", {"steps": 50, "travel_length": 10, "travel_repeat": 2}, budget=100,
                  description="the best measured setting within 100 network evaluations"),
    QualityPreset("balanced", "ddnm", {"steps": 100, "travel_length": 10, "travel_repeat": 3}, budget=500,
                  description="the best measured setting within 500 network evaluations"),
    # On faces32 the lowest error at any cost is the balanced setting: more evaluations did not help.
    QualityPreset("best", "ddnm", {"steps": 100, "travel_length": 10, "travel_repeat": 3}, budget=None,
                  description="the best measured setting at any cost"),
    QualityPreset("paper", "repaint", {"steps": 250, "jump_length": 10, "jump_n_sample": 10}, budget=None,
                  description="the RePaint paper's setting: 250 steps, jumps of 10, 10 times (2,410 evaluations)"),
)}
NAMES = tuple(PRESETS)
