"""Checking and normalising uploaded images and masks (Pillow only, no torch)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import puremagic
from fastapi import HTTPException
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}


def read_limited(stream: BinaryIO, limit: int, field: str) -> bytes:
    """Read at most `limit` bytes; a larger upload is refused without reading it all."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{field} is larger than the {limit} byte limit")
    if not data:
        raise HTTPException(422, f"{field} is empty")
    return data


def looks_accepted(data: bytes) -> bool:
    """Whether the bytes start like a PNG, JPEG or WebP file (their signatures)."""
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


# Common uploads puremagic names poorly (a ZIP as a Word file, AVIF as MP4), checked first.
KNOWN_SIGNATURES = (
    (lambda d: d.startswith(b"PK\x03\x04"), "application/zip"),
    (lambda d: d[4:12] in (b"ftypavif", b"ftypavis"), "image/avif"),
    (lambda d: d[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"), "image/heic"),
    (lambda d: d.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")), "image/jxl"),
    (lambda d: d.startswith((b"GIF87a", b"GIF89a")), "image/gif"),
    (lambda d: d.startswith(b"BM"), "image/bmp"),
    (lambda d: d.startswith((b"II*\x00", b"MM\x00*")), "image/tiff"),
    (lambda d: d.startswith(b"%PDF-"), "application/pdf"),
)


def detected_type(data: bytes) -> str:
    """What a refused upload seems to be, for the error message: a MIME type from its
    signature (puremagic reads bytes, it decodes nothing), or text, or unknown binary data."""
    for matches, mime in KNOWN_SIGNATURES:
        if matches(data):
            return mime
    try:
        mime = puremagic.from_string(data[:4096], mime=True)
        if mime:
            return mime
    except (puremagic.PureError, ValueError):
        pass
    head = data[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return "unknown binary data"
    return "text" if b"\0" not in head else "unknown binary data"


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode an upload, refusing non-images, other formats, animations, bombs and corrupt files.

    Only the PNG, JPEG and WebP decoders may look at the bytes (`formats=`): Pillow's other
    decoders (dozens, some rarely exercised) never parse a client's file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
            except UnidentifiedImageError:
                if looks_accepted(data):  # the right kind of file, broken inside
                    raise HTTPException(422, f"{field} is not a readable image: its header is corrupt") from None
                raise HTTPException(415, f"{field} is not a PNG, JPEG or WebP image: it looks like "
                                         f"{detected_type(data)}") from None
            width, height = img.size
            # Refuse huge dimensions from the header, before decoding the pixels.
            if width * height > max_pixels:
                raise HTTPException(413, f"{field} is {width}x{height}: more than the {max_pixels} pixel limit")
            if getattr(img, "n_frames", 1) > 1:
                raise HTTPException(422, f"{field} is animated ({img.n_frames} frames): send a single still image")
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
    mode: str
    masked_pixels: int


# Modes kept as they are (PNG stores them); anything else is converted to RGB.
KEPT_MODES = {"L", "LA", "RGB", "RGBA", "P", "I;16", "I"}


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _normalise(image: Image.Image) -> Image.Image:
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("I;16B", "I;16L"):
        return image.convert("I;16")
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        # A palette's transparent entry could be chosen for a filled pixel: keep alpha apart.
        return image.convert("RGBA")
    return image if image.mode in KEPT_MODES else image.convert("RGB")


def _alpha(image: Image.Image):
    if image.mode in ("RGBA", "LA"):
        return image.getchannel("A")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def prepare(image: Image.Image, mask: Image.Image | None) -> PreparedUpload:
    """The image in its own mode (EXIF rotation applied) and a binary L mask (255 = fill), as PNG.

    Mask pixels above 50% white count as masked; transparent mask pixels count as unpainted.
    Without a mask, the image's transparent pixels (alpha below 50%) are the region to fill.
    """
    image = _normalise(image)
    if mask is None:
        alpha = _alpha(image)
        if alpha is None:
            raise HTTPException(422, "send a mask, or an image with transparent pixels to fill")
        binary = alpha.point(lambda v: 255 if v < 128 else 0)
    else:
        if image.size != mask.size:
            raise HTTPException(422, f"mask is {mask.size[0]}x{mask.size[1]} but image is "
                                     f"{image.size[0]}x{image.size[1]}: they must match")
        if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
            mask = mask.convert("RGBA")
            # Transparent mask pixels are not painted: they count as black.
            bg = Image.new("RGBA", mask.size, (0, 0, 0, 255))
            mask = Image.alpha_composite(bg, mask)
        if mask.mode.startswith("I"):
            mask = mask.point(lambda v: v / 257).convert("L") if max(mask.getextrema()) > 255 else mask.convert("L")
        binary = mask.convert("L").point(lambda v: 255 if v > 127 else 0)
    masked = binary.histogram()[255]
    if masked == 0:
        raise HTTPException(422, "mask selects no pixel: paint the region to fill in white")
    return PreparedUpload(_png(image), _png(binary), image.size[0], image.size[1], image.mode, masked)
