"""The formats a job's results can be written in: one definition, which the API's form and
`GET /models`, the worker's encoder, admission's size estimate, the CLI and folder mode read.

Torch-free (the API imports it). Adding a format is a line here and its branch in
worker/encoding.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OutputFormat:
    name: str              # the `output_format` value
    pil_format: str        # Pillow's name for the encoder
    media_type: str        # Content-Type of a result
    suffix: str            # file suffix of a result written to disk (folder mode, the page's download)
    max_side: int          # the largest side the encoder can write: larger uploads are refused at submit
    bytes_per_value: float  # a result's bytes per pixel and channel at worst, for admission (docs/deployment.md)
    lossless: bool


FORMATS = (
    # PNG: about the raw pixels at worst (noise does not compress).
    OutputFormat("png", "PNG", "image/png", ".png", 2**31 - 1, 1.0, lossless=True),
    # libjpeg writes at most 65,500 pixels a side; quality 95 stays well under half the raw pixels.
    OutputFormat("jpeg", "JPEG", "image/jpeg", ".jpg", 65500, 0.4, lossless=False),
    # WebP sizes are 14-bit; quality 92.
    OutputFormat("webp", "WEBP", "image/webp", ".webp", 16383, 0.4, lossless=False),
)
OUTPUT_FORMATS: dict[str, OutputFormat] = {f.name: f for f in FORMATS}
NAMES: tuple[str, ...] = tuple(OUTPUT_FORMATS)
DEFAULT = "png"

# The form's type: FastAPI validates against it and shows it in the OpenAPI schema.
OutputFormatName = Literal[NAMES]  # type: ignore[valid-type]


def describe() -> dict[str, dict]:
    """What `GET /models` tells clients (the page names its downloads from it)."""
    return {f.name: {"media_type": f.media_type, "suffix": f.suffix, "max_side": f.max_side, "lossless": f.lossless}
            for f in FORMATS}
