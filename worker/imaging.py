"""Conversions between 8-bit pixels and the sampler's [-1, 1] range."""

from __future__ import annotations

import torch


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the reference's scaling."""
    return pixels.float() / 127.5 - 1


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8, rounded to the nearest level."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
