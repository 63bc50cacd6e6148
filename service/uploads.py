"""Checking and normalising uploaded images and masks (Pillow only, no torch)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from fastapi import HTTPException
from PIL import Image, ImageOps

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}


def read_limited(stream: BinaryIO, limit: int, field: str) -> bytes:
    """Read at most `limit` bytes; a larger upload is refused without reading it all."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{field} is larger than the {limit} byte limit")
    if not data:
        raise HTTPException(422, f"{field} is empty")
    return data


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode an upload, refusing non-images, other formats, bombs and corrupt files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ACCEPTED_FORMATS:
                raise HTTPException(415, f"{field} must be PNG, JPEG or WebP, got {img.format}")
            width, height = img.size
            # Refuse huge dimensions from the header, before decoding the pixels.
            if width * height > max_pixels:
                raise HTTPException(413, f"{field} is {width}x{height}: more than the {max_pixels} pixel limit")
            img.load()
    except HTTPException:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, f"{field} has too many pixels") from None
    except Exception as exc:  # Pillow raises many types for garbage and truncated files
        raise HTTPException(422, f"{field} is not a readable image: {exc}") from None
    return ImageOps.exif_transpose(img)


@dataclass(frozen=True)
class PreparedUpload:
    image_png: bytes
    mask_png: bytes
    width: int
    height: int
    masked_pixels: int


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def prepare(image: Image.Image, mask: Image.Image) -> PreparedUpload:
    """RGB image and binary L mask (255 = fill) as PNG; white above 50% counts as masked."""
    if image.size != mask.size:
        raise HTTPException(422, f"mask is {mask.size[0]}x{mask.size[1]} but image is "
                                 f"{image.size[0]}x{image.size[1]}: they must match")
    rgb = image.convert("RGB")
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        mask = mask.convert("RGBA")
        # Transparent mask pixels are not painted: they count as black.
        bg = Image.new("RGBA", mask.size, (0, 0, 0, 255))
        mask = Image.alpha_composite(bg, mask)
    binary = mask.convert("L").point(lambda v: 255 if v > 127 else 0)
    masked = binary.histogram()[255]
    if masked == 0:
        raise HTTPException(422, "mask selects no pixel: paint the region to fill in white")
    return PreparedUpload(_png(rgb), _png(binary), rgb.size[0], rgb.size[1], masked)
