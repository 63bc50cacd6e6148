"""Pure-torch RePaint: the ADM UNet, the noisy classifier, diffusion math and the samplers.

Nothing here imports web, queue or Redis code; the worker builds on these functions. The package
loads its torch modules on first use: the API imports the torch-free `models.schedule` and
`models.sampler_settings` (to validate requests and count their cost) and `models.registry` /
`models.diffusers_folder` (what models exist) and must not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "checkpoints", "load_weights": "checkpoints", "read_state_dict": "checkpoints",
    "sha256_of": "checkpoints",
    "ConfigError": "config",
    "Diffusion": "diffusion", "build_diffusion": "diffusion", "space_timesteps": "config",
    "PRESETS": "registry", "Preset": "registry", "get_preset": "registry", "resolve_model": "registry",
    "parse_model_ref": "registry", "parse_model_refs": "registry", "ModelRef": "registry",
    "LoadedModel": "presets", "build_classifier": "presets",
    "build_unet": "presets", "load_preset": "presets", "randomize_weights": "presets",
    "DiffusersFolderError": "diffusers_folder", "read_folder": "diffusers_folder",
    "SampleBatch": "sample_batch", "SampleParams": "sample_batch", "random_seed": "sample_batch",
    "inpaint": "sampling", "step": "sampling",
    "DDNMSettings": "sampler_settings", "RePaintSettings": "sampler_settings", "SamplerSettings": "sampler_settings",
    "SettingsError": "sampler_settings", "settings_from_record": "sampler_settings",
    "count_model_evaluations": "schedule", "jump_schedule": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
