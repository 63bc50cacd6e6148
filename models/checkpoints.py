"""Loading weights: strict key match, `weights_only` unpickling, optional sha256 pinning."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the network its config describes."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path, *, sha256: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a state dict with `weights_only=True`: checkpoints are untrusted files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise CheckpointError(f"checkpoint {path} has sha256 {actual}, expected {sha256}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code in it, wrong format
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors")
    return state


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str = "checkpoint",
                 config: object = None) -> nn.Module:
    """Copy `state` into `module` with a strict key and shape match (dtype is converted)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        lines = [f"{what} does not fit the network its config describes"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", wrong_shape)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                lines.append(f"{label}: {shown}")
        if config is not None:
            lines.append(f"expected config: {config}")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state, strict=True)
    return module
