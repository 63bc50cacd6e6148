"""Pure-torch RePaint: the ADM UNet, the noisy classifier, diffusion math and the sampler.

Nothing here imports web, queue or Redis code; the worker builds on these functions.
"""

from .checkpoints import CheckpointError, load_weights, read_state_dict, sha256_of
from .config import ConfigError
from .diffusion import Diffusion, build_diffusion, space_timesteps
from .presets import (PRESETS, LoadedModel, Preset, build_classifier, build_unet, get_preset,
                      load_preset, randomize_weights)
from .repaint import RePaintBatch, SampleParams, inpaint, random_seed, step
from .schedule import count_model_evaluations, jump_schedule

__all__ = [
    "CheckpointError", "ConfigError", "Diffusion", "LoadedModel", "PRESETS", "Preset",
    "RePaintBatch", "SampleParams", "build_classifier", "build_diffusion", "build_unet",
    "count_model_evaluations", "get_preset", "inpaint", "jump_schedule", "load_preset",
    "load_weights", "random_seed", "randomize_weights", "read_state_dict", "sha256_of",
    "space_timesteps", "step",
]
