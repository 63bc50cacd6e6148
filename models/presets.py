"""Named model presets: official configs, expected checkpoint files and default schedules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from .checkpoints import CheckpointError, load_weights, read_state_dict
from .classifier import EncoderUNetModel
from .config import JumpParams, classifier_config, jump_params, unet_config
from .diffusion import Diffusion, build_diffusion
from .unet import UNetModel

# The keys the official RePaint confs share (face_example.yml, test_*_256_*.yml).
_ADM_256 = {
    "image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_heads": 4,
    "num_heads_upsample": -1, "num_head_channels": 64, "attention_resolutions": "32,16,8",
    "channel_mult": "", "dropout": 0.0, "class_cond": False, "use_checkpoint": False,
    "use_scale_shift_norm": True, "resblock_updown": True, "use_fp16": False,
    "use_new_attention_order": False, "learn_sigma": True, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "250", "use_kl": False,
    "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "schedule_jump_params": {"t_T": 250, "n_sample": 1, "jump_length": 10, "jump_n_sample": 10},
}
_IMAGENET_CLASSIFIER = {
    "classifier_use_fp16": False, "classifier_width": 128, "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8", "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True, "classifier_pool": "attention", "classifier_scale": 1.0,
}
# The small random-weight UNet of the reference golden data (tiny_unet_A).
_TINY = {
    "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2,2",
    "attention_resolutions": "16,8", "num_heads": 1, "num_head_channels": 16,
    "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
    "class_cond": False, "learn_sigma": True, "dropout": 0.0, "use_checkpoint": False,
    "use_fp16": False, "use_new_attention_order": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "250", "use_kl": False,
    "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "schedule_jump_params": {"t_T": 250, "n_sample": 1, "jump_length": 10, "jump_n_sample": 10},
}

# Our demo model, trained here on procedural faces (training/): fixed variance, 32x32.
FACES32_SHA256 = "472b811a4c799f8c0592f0c55c28ba9fb7fa25c3d1048f21fe19572f45fc0d91"
FACES32_CONF = {
    "image_size": 32, "num_channels": 32, "num_res_blocks": 2, "channel_mult": "1,2,2",
    "attention_resolutions": "16,8", "num_heads": 1, "num_head_channels": 32,
    "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
    "class_cond": False, "learn_sigma": False, "dropout": 0.0, "use_checkpoint": False,
    "use_fp16": False, "use_new_attention_order": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "250", "use_kl": False,
    "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False,
    "schedule_jump_params": {"t_T": 250, "n_sample": 1, "jump_length": 10, "jump_n_sample": 10},
}


WEIGHTS_DIR = Path(__file__).parent / "weights"

# Dtypes `load_preset` applies the reference's half-precision layout for (torso convolutions only).
HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A model the service can serve: its conf, where its weights come from, its defaults.

    `checkpoint` is the official file name (users bring the file); `bundled` names a file we
    ship in `models/weights/` (pinned by `checkpoint_sha256`); a preset with neither is
    initialised with seeded random weights, for tests.
    """

    name: str
    description: str
    conf: Mapping[str, Any]
    checkpoint: str | None = None
    bundled: str | None = None
    checkpoint_sha256: str | None = None
    classifier_checkpoint: str | None = None
    random_init_seed: int | None = None
    class_cond: bool = False
    # "whole": trained on whole, centred subjects (aligned faces), so `strategy=auto` gives the
    # model the whole image; "region": scenes and objects, where a crop around the mask works.
    framing: str = "region"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.conf["image_size"])

    @property
    def defaults(self) -> JumpParams:
        return jump_params(self.conf)

    @property
    def bundled_path(self) -> Path | None:
        return None if self.bundled is None else WEIGHTS_DIR / self.bundled

    @property
    def has_classifier(self) -> bool:
        return self.classifier_checkpoint is not None


PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (
    Preset(name="celeba256", description="CelebA-HQ faces, 256x256 (official RePaint checkpoint)",
           conf=_ADM_256, checkpoint="celeba256_250000.pt", framing="whole"),
    Preset(name="places256", description="Places2 scenes, 256x256 (official RePaint checkpoint)",
           conf=_ADM_256, checkpoint="places256_300000.pt"),
    Preset(name="imagenet256",
           description="ImageNet, 256x256, class-conditional with a noisy classifier (official guided-diffusion checkpoints)",
           conf={**_ADM_256, **_IMAGENET_CLASSIFIER, "class_cond": True, "use_fp16": True},
           checkpoint="256x256_diffusion.pt", classifier_checkpoint="256x256_classifier.pt",
           class_cond=True),
    Preset(name="faces32",
           description="Procedural cartoon faces, 32x32, trained here on CPU (python -m training.train); "
                       "the demo model that `repaint serve` uses by default",
           conf=FACES32_CONF, bundled="faces32.pt", checkpoint_sha256=FACES32_SHA256, framing="whole"),
    Preset(name="tiny", description="Tiny random-weight 32x32 UNet (reference tiny_unet_A layout); "
                                    "for tests and first runs, it does not produce meaningful images",
           conf=_TINY, random_init_seed=0),
)})


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


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
        preset = get_preset(preset)
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
