"""Conversions between the normalised PNG bytes in Redis and the sampler's tensors."""

from __future__ import annotations

import io

import torch
from PIL import Image


def png_to_uint8(data: bytes, mode: str) -> torch.Tensor:
    """PNG bytes -> [C x H x W] uint8 tensor (mode 'RGB' or 'L')."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert(mode)
        width, height = img.size
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, -1).permute(2, 0, 1).contiguous()


def uint8_to_png(pixels: torch.Tensor) -> bytes:
    """[3 x H x W] uint8 tensor -> PNG bytes."""
    c, h, w = pixels.shape
    img = Image.fromarray(pixels.permute(1, 2, 0).contiguous().cpu().numpy(), mode="RGB")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the reference's scaling."""
    return pixels.float() / 127.5 - 1


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8, rounded to the nearest level."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
