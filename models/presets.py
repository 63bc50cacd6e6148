"""Loading a model: a preset's (or a diffusers folder's) networks on a device, weights checked.

What models exist, and their confs, live in the torch-free `models.registry`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .checkpoints import CheckpointError, load_weights, read_state_dict
from .classifier import EncoderUNetModel
from .config import classifier_config, unet_config
from .diffusion import Diffusion, build_diffusion
from .registry import (_ADM_256, _IMAGENET_CLASSIFIER, _TINY, FACES32_CONF, FACES32_SHA256,  # noqa: F401
                       PRESETS, WEIGHTS_DIR, Preset, get_preset, resolve_model)
from .unet import UNetModel

# Dtypes `load_preset` applies the reference's half-precision layout for (torso convolutions only).
HALF_DTYPES = (torch.float16, torch.bfloat16)


def build_unet(conf: Mapping[str, Any]) -> UNetModel:
    """The ADM UNet an official conf describes (float32, uninitialised weights)."""
    return UNetModel(unet_config(conf))


def build_classifier(conf: Mapping[str, Any]) -> EncoderUNetModel:
    """The noisy classifier the ``classifier_*`` keys of an official conf describe."""
    return EncoderUNetModel(classifier_config(conf))


def randomize_weights(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter with seeded values of a sensible scale.

    The reference zero-initialises output layers, which would make an untrained network
    predict zero noise; random values everywhere make a test network non-trivial.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            z = torch.randn(p.shape, generator=generator)
            if isinstance(_owner(module, name), nn.GroupNorm):
                p.copy_(1 + 0.2 * z if name.endswith("weight") else 0.2 * z)
            elif name.endswith("bias"):
                p.copy_(0.1 * z)
            elif p.ndim >= 2:
                p.copy_(z / (p[0].numel() ** 0.5))
            else:
                p.copy_(z / (p.numel() ** 0.5))
    return module


def _owner(module: nn.Module, param_name: str) -> nn.Module:
    return module.get_submodule(param_name.rpartition(".")[0])


@dataclass
class LoadedModel:
    """A preset's networks on a device, ready to sample."""

    preset: Preset
    unet: UNetModel
    diffusion: Diffusion
    classifier: EncoderUNetModel | None = None


def load_preset(preset: Preset | str, *, checkpoint: str | Path | None = None,
                classifier_checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Build a preset's networks and load their weights strictly (random weights for `tiny`).

    `dtype` float16 or bfloat16 is half precision as the reference runs it: only the convolutions
    of the UNet's torso in that dtype (`UNetModel.convert_torso`), the embeddings, GroupNorms and
    output head float32; the classifier likewise when its conf's `classifier_use_fp16` is true,
    else float32 throughout. Any other dtype casts the whole networks.
    """
    if isinstance(preset, str):
        preset = resolve_model(preset)
    if preset.diffusers is not None:
        return _load_diffusers(preset, device=device, dtype=dtype)
    unet = build_unet(preset.conf)
    sha256 = None
    if checkpoint is None and preset.bundled_path is not None:
        checkpoint, sha256 = preset.bundled_path, preset.checkpoint_sha256
    if checkpoint is not None:
        load_weights(unet, read_state_dict(checkpoint, sha256=sha256),
                     what=f"checkpoint {checkpoint}", config=unet.config)
    elif preset.random_init_seed is not None:
        randomize_weights(unet, preset.random_init_seed)
    else:
        raise CheckpointError(
            f"model {preset.name!r} needs its checkpoint ({preset.checkpoint}); set its path")
    classifier = None
    if preset.has_classifier and classifier_checkpoint is not None:
        classifier = build_classifier(preset.conf)
        load_weights(classifier, read_state_dict(classifier_checkpoint),
                     what=f"classifier checkpoint {classifier_checkpoint}", config=classifier.config)
        classifier = classifier.to(device=device).eval().requires_grad_(False)
        if dtype in HALF_DTYPES:
            if classifier.config.use_fp16:
                classifier.convert_torso(dtype)
        else:
            classifier = classifier.to(dtype=dtype)
    unet = unet.to(device=device).eval().requires_grad_(False)
    if dtype in HALF_DTYPES:
        unet.convert_torso(dtype)  # after loading: the weights arrive in float32
    else:
        unet = unet.to(dtype=dtype)
    return LoadedModel(preset=preset, unet=unet, diffusion=build_diffusion(preset.conf), classifier=classifier)


def _load_diffusers(preset: Preset, *, device: str | torch.device, dtype: torch.dtype) -> LoadedModel:
    """A diffusers folder's UNet and process. Half precision casts the whole network (diffusers
    models have no reference layout to follow); inputs and outputs stay float32 (DiffusersUNet)."""
    from . import diffusers_unet

    unet = diffusers_unet.load_unet(preset.diffusers).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel(preset=preset, unet=unet, diffusion=diffusers_unet.build_diffusion(preset.diffusers))
