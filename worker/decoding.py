"""How an upload's bytes become pixels: the same on both sides of the queue (Pillow only, no torch).

The API checks an upload by decoding it once and stores the bytes as the client sent them (a
JPEG stays a JPEG: a re-encoding as PNG took 8x the bytes of a photograph in Redis); the worker
decodes those bytes again with this same code, so what the worker sees is what the API checked.

Only the PNG, JPEG and WebP decoders may look at the bytes (`formats=`): Pillow's other
decoders (dozens, some rarely exercised) never parse a client's file.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")

# Modes kept as they are; anything else is converted to RGB.
KEPT_MODES = {"L", "LA", "RGB", "RGBA", "P", "I;16", "I"}


def open_restricted(data: bytes) -> Image.Image:
    """The image's header, read by an accepted decoder only (pixels not decoded yet).
    Raises PIL.UnidentifiedImageError for anything else, and DecompressionBombWarning as an error
    for a header that claims more pixels than Pillow's bomb limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))


def normalise(image: Image.Image) -> Image.Image:
    """The upload in a mode the worker handles, with its meaning kept (alpha, 16 bits)."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("I;16B", "I;16L"):
        return image.convert("I;16")
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        # A palette's transparent entry could be chosen for a filled pixel: keep alpha apart.
        return image.convert("RGBA")
    return image if image.mode in KEPT_MODES else image.convert("RGB")


def finish(image: Image.Image) -> Image.Image:
    """Decode the pixels of an opened upload, upright (EXIF orientation applied), normalised."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image.load()
    return normalise(ImageOps.exif_transpose(image))


def decode(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Bytes as stored -> the image the job works on. ValueError with the reason when the bytes
    are not an accepted, readable, still image within `max_pixels`."""
    try:
        image = open_restricted(data)
        if max_pixels is not None and image.size[0] * image.size[1] > max_pixels:
            raise ValueError(f"{image.size[0]}x{image.size[1]} is more than {max_pixels} pixels")
        if getattr(image, "n_frames", 1) > 1:
            raise ValueError("animated images are not accepted")
        return finish(image)
    except ValueError:
        raise
    except Exception as exc:  # Pillow raises many types for garbage and truncated files
        raise ValueError(f"not a readable PNG, JPEG or WebP image: {exc}") from exc
