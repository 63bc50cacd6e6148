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


# Chosen on faces32 (docs/quality.md): at each budget, the cheapest DDNM setting that no other
# measured setting within the budget beat beyond the noise (16 faces per mask family, paired).
# More steps beat time travel there: 100 plain steps beat 50 with travel 10x2 (90 evaluations),
# and 280 with travel 10x3 were within the noise of 250 plain steps. There is no `best`: no
# setting measured above `balanced` (280 with travel, 500 steps) beat it beyond the noise.
PRESETS: Mapping[str, QualityPreset] = {p.name: p for p in (
    QualityPreset("fast", "ddnm", {"steps": 100, "eta": 0.85, "travel_length": 1, "travel_repeat": 1}, budget=100,
                  description="DDNM, 100 steps, no time travel (100 evaluations): the cheapest setting that no "
                              "other within 100 evaluations beat beyond the noise"),
    QualityPreset("balanced", "ddnm", {"steps": 250, "eta": 0.85, "travel_length": 1, "travel_repeat": 1}, budget=500,
                  description="DDNM, 250 steps, no time travel (250 evaluations): the cheapest setting that no "
                              "other within 500 evaluations beat beyond the noise, nor any costlier one measured"),
    QualityPreset("paper", "repaint", {"steps": 250, "jump_length": 10, "jump_n_sample": 10}, budget=None,
                  description="the RePaint paper's setting: 250 steps, jumps of 10, 10 times (2,410 evaluations)"),
)}
NAMES = tuple(PRESETS)
