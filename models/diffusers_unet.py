"""A diffusers `UNet2DModel` as one of our networks: built by diffusers, loaded and checked by us.

diffusers (the optional extra `repaint-server[diffusers]`) builds the network from the folder's
config.json. We read the weights ourselves, so that the rules of our own checkpoints hold:
safetensors without pickle, `.bin` only through `torch.load(weights_only=True)`, and a strict
key and shape match whose mismatch names the keys. Checkpoints saved by diffusers before its
attention rewrite (the google/ddpm-* files: `query`, `key`, `value`, `proj_attn`) are renamed
to today's keys first, as diffusers' own loader does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .checkpoints import CheckpointError, load_weights, read_state_dict
from .config import DiffusionConfig
from .diffusers_folder import DiffusersSpec
from .diffusion import Diffusion, MeanType, VarianceType

# Old attention parameter names -> today's (diffusers renamed them in its attention rewrite).
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _diffusers():
    try:
        import diffusers
    except ImportError as exc:
        raise CheckpointError("this model is a diffusers folder, which needs the diffusers library: "
                              "pip install 'repaint-server[diffusers]'") from exc
    return diffusers


@dataclass(frozen=True)
class NetworkShape:
    """What the worker asks of any network: input channels and classes (None: unconditional)."""

    in_channels: int
    num_classes: int | None = None


class DiffusersUNet(nn.Module):
    """`model(x, timesteps, y)` -> output [N x C' x H x W] float32, as our ADM UNet answers.

    The network may hold half-precision weights; its input is cast to them and its output back
    to float32, so the samplers' arithmetic stays float32.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.config = NetworkShape(in_channels=int(unet.config.in_channels))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise ValueError("this diffusers model is unconditional: it takes no class label")
        out = self.unet(x.to(self.dtype), timesteps, return_dict=False)[0]
        return out.float()


def read_weights(spec: DiffusersSpec) -> dict[str, torch.Tensor]:
    """The UNet's state dict, without unpickling anything but tensors."""
    if spec.weights_format == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(spec.weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {spec.weights}: {exc}") from exc
    return read_state_dict(spec.weights)


def modern_keys(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pre-rewrite attention keys for the attention blocks diffusers marks as converted."""
    out = dict(state)
    for path, module in net.named_modules():
        if not getattr(module, "_from_deprecated_attn_block", False):
            continue
        for old, new in _DEPRECATED_ATTENTION.items():
            for kind in ("weight", "bias"):
                key = f"{path}.{old}.{kind}"
                if key in out and f"{path}.{new}.{kind}" not in out:
                    out[f"{path}.{new}.{kind}"] = out.pop(key)
    return out


def build_unet(spec: DiffusersSpec) -> nn.Module:
    """The UNet2DModel the folder's config describes (uninitialised weights)."""
    diffusers = _diffusers()
    config = {k: v for k, v in spec.unet_config.items() if not k.startswith("_")}
    try:
        return diffusers.UNet2DModel.from_config(config)
    except Exception as exc:  # a config this diffusers version cannot build
        raise CheckpointError(f"diffusers cannot build the UNet of {spec.unet_dir}/config.json: {exc}") from exc


def load_unet(spec: DiffusersSpec) -> DiffusersUNet:
    """Build the folder's UNet and load its weights strictly (float32, on the CPU)."""
    unet = build_unet(spec)
    state = modern_keys(unet, read_weights(spec))  # half-precision files are converted as they are copied
    load_weights(unet, state, what=f"weights {spec.weights}", config=f"{spec.unet_dir}/config.json")
    return DiffusersUNet(unet)


def build_diffusion(spec: DiffusersSpec) -> Diffusion:
    """Our diffusion process for the folder's scheduler: its betas, prediction, variance, clipping."""
    config = DiffusionConfig(diffusion_steps=spec.num_train_timesteps, learn_sigma=spec.variance == "learned_range",
                             betas=spec.betas)
    return Diffusion(config=config, mean_type=MeanType(spec.prediction), var_type=VarianceType(spec.variance),
                     clip_range=spec.clip_range)
