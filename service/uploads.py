"""Checking and normalising uploaded images and masks (Pillow only, no torch)."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import puremagic
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from worker import decoding


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
    """Decode an upload, refusing non-images, other formats, animations, bombs and corrupt files,
    with the decoders and the EXIF and mode handling the worker uses on the stored bytes
    (worker.decoding)."""
    try:
        try:
            img = decoding.open_restricted(data)
        except UnidentifiedImageError:
            if looks_accepted(data):  # the right kind of file, broken inside
                raise HTTPException(422, f"{field} is not a readable image: its header is corrupt") from None
            raise HTTPException(415, f"{field} is not a PNG, JPEG or WebP image: it looks like "
                                     f"{detected_type(data)}") from None
        width, height = img.size
        # Refuse huge dimensions from the header, before decoding the pixels.
        if width * height > max_pixels:
            raise HTTPException(413, f"{field} is {width}x{height} ({width * height:,} pixels): more than the "
                                     f"{max_pixels:,} pixel limit (REPAINT_MAX_IMAGE_PIXELS)")
        if getattr(img, "n_frames", 1) > 1:
            raise HTTPException(422, f"{field} is animated ({img.n_frames} frames): send a single still image")
        return decoding.finish(img)
    except HTTPException:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses such a header before we see its size; its message carries the count.
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels than Pillow will open"
        raise HTTPException(413, f"{field} claims {size}: more than the {max_pixels:,} pixel limit "
                                 "(REPAINT_MAX_IMAGE_PIXELS)") from None
    except Exception as exc:  # Pillow raises many types for garbage and truncated files
        raise HTTPException(422, f"{field} is not a readable image: {exc}") from None


def header_pixels(stream: BinaryIO) -> int:
    """Width x height from an upload's header (0 if it has none we read), without decoding it or
    reading it into memory; the stream is left at its start."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused later, with its reason
            with Image.open(stream, formats=list(decoding.ACCEPTED_FORMATS)) as img:
                return img.size[0] * img.size[1]
    except Exception:
        return 0
    finally:
        stream.seek(0)


class BudgetBusy(Exception):
    """The pixel budget stayed spent for longer than a request may wait."""


class PixelBudget:
    """Pixels being decoded at once by this process, bounded: the API's peak memory then follows
    REPAINT_PIXEL_BUDGET, not the number of concurrent uploads. Requests run in the threadpool,
    so this is a plain condition variable; the biggest request fits alone (settings check)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, wait: float):
        pixels = min(max(pixels, 0), self.capacity)
        deadline = time.monotonic() + wait
        with self._cond:
            while self.in_use + pixels > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetBusy()
                self._cond.wait(left)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


@dataclass(frozen=True)
class PreparedUpload:
    image_bytes: bytes   # as the client sent them: stored as they are, decoded again by the worker
    mask_png: bytes      # the binary mask (255 = fill) as a 1-bit PNG: a few bytes per row
    width: int
    height: int
    mode: str
    masked_pixels: int


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _alpha(image: Image.Image):
    if image.mode in ("RGBA", "LA"):
        return image.getchannel("A")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def prepare(image_bytes: bytes, image: Image.Image, mask: Image.Image | None) -> PreparedUpload:
    """The upload's bytes as sent, and its binary mask (255 = fill) as a PNG; `image` and `mask`
    are as open_image decoded them (EXIF rotation applied, normalised).

    Mask pixels above 50% white count as masked; transparent mask pixels count as unpainted.
    Without a mask, the image's transparent pixels (alpha below 50%) are the region to fill.
    """
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
    return PreparedUpload(image_bytes, _png(binary.convert("1")), image.size[0], image.size[1], image.mode, masked)
