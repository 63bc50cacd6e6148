"""Results as files: PNG (lossless, every mode), JPEG and WebP (8-bit)."""

from __future__ import annotations

import io

from PIL import Image

from .geometry import to_l8
from .output_formats import OUTPUT_FORMATS


def encode(image: Image.Image, output_format: str) -> bytes:
    fmt = OUTPUT_FORMATS[output_format].pil_format
    out = io.BytesIO()
    if fmt != "PNG" and image.mode.startswith("I"):
        image = to_l8(image)  # JPEG and WebP are 8-bit: scale 16-bit levels down, never clip
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if fmt == "WEBP" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    if fmt == "PNG":
        image.save(out, format="PNG", pnginfo=None)
    elif fmt == "WEBP":
        image.save(out, format="WEBP", lossless=False, quality=92)
    else:
        image.save(out, format="JPEG", quality=95)
    return out.getvalue()
