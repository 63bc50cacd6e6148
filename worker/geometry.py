"""Any size and shape: from an uploaded photo to the model's square input and back.

Strategies:
- `crop`: a square region around the mask's bounding box, with context around it, scaled to
  the model's resolution, inpainted, scaled back and pasted in. Best when the mask is small
  compared with the image: the model sees the damage at the highest resolution.
- `resize`: the whole image, padded to a square (the padding is generated and thrown away, so
  the aspect ratio is kept), scaled to the model's resolution. For masks that span the image.
- `auto`: `crop` when a square crop with context fits inside the image, else `resize`.

Whatever the strategy, only pixels inside the (optionally dilated) mask change: every other
pixel is the uploaded one, bit for bit, in the uploaded mode. A feathered band of `blend`
pixels along the inside of the mask edge mixes the generated pixels with the original ones.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

STRATEGIES = ("auto", "crop", "resize")
# Context around the mask's bounding box for `crop`, as a fraction of the box's longer side.
CONTEXT = 0.5


@dataclass(frozen=True)
class Plan:
    """Where the model's square input comes from: `box` (may extend past the image: padding)."""

    strategy: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels; square
    model_size: int

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def scale(self) -> float:
        """Model pixels per image pixel (below 1: the region is shrunk for the model)."""
        return self.model_size / self.side

    def describe(self) -> dict:
        return {**asdict(self), "scale": round(self.scale, 4)}


def mask_bbox(fill: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(fill)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def plan(width: int, height: int, fill: np.ndarray, model_size: int, strategy: str = "auto") -> Plan:
    """Choose the square region the model will see. `fill` is [H x W] bool, True = to fill."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    x0, y0, x1, y1 = mask_bbox(fill)
    longer = max(x1 - x0, y1 - y0)
    # The crop: the box with context, at least the model's size when the image allows it.
    side = max(math.ceil(longer * (1 + 2 * CONTEXT)), min(model_size, width, height))
    fits = side <= min(width, height)
    if strategy == "crop" or (strategy == "auto" and fits):
        side = min(side, max(width, height)) if not fits else side
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(round(cx - side / 2))
        top = int(round(cy - side / 2))
        # Shift the square inside the image where it fits; centre it where it cannot.
        left = min(max(left, 0), width - side) if side <= width else (width - side) // 2
        top = min(max(top, 0), height - side) if side <= height else (height - side) // 2
        return Plan("crop", (left, top, left + side, top + side), model_size)
    side = max(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return Plan("resize", (left, top, left + side, top + side), model_size)


def auto_blend(p: Plan) -> int:
    """The default blend band: about one model pixel at the image's scale, at least 2 pixels.

    Chosen by looking at results: without a band the upscaled fill shows a ring where it meets
    the photo; a band of one model pixel hides it without pulling much of the masked content back.
    """
    return max(2, math.ceil(1 / p.scale))


def dilate(fill: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return fill
    img = Image.fromarray(fill.astype(np.uint8) * 255)
    return np.asarray(img.filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 127


def to_l8(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit greyscale image as 8-bit L, scaled (Pillow's own convert clips at 255,
    which turns a 16-bit photo white)."""
    arr = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
    return Image.fromarray(np.clip(arr / peak * 255 + 0.5, 0, 255).astype(np.uint8))


def to_rgb8(image: Image.Image) -> Image.Image:
    """The model's view of any upload: 8-bit RGB (alpha dropped, 16-bit scaled down)."""
    if image.mode.startswith("I"):
        return to_l8(image).convert("RGB")
    return image.convert("RGB")


def model_input(image: Image.Image, fill: np.ndarray, p: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [S x S x 3], keep [S x S] bool) for the model; padding counts as unknown."""
    rgb = to_rgb8(image)
    region = rgb.crop(p.box).resize((p.model_size, p.model_size), Image.Resampling.LANCZOS
                                     if p.side > p.model_size else Image.Resampling.BICUBIC)
    # A model pixel is known only if every image pixel under it is known and inside the image.
    x0, y0, x1, y1 = p.box
    window = np.full((p.side, p.side), 255, dtype=np.uint8)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height)
    window[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = fill[iy0:iy1, ix0:ix1].astype(np.uint8) * 255
    coverage = np.asarray(Image.fromarray(window).resize((p.model_size, p.model_size), Image.Resampling.BOX))
    return np.asarray(region), coverage == 0


def feather(fill: np.ndarray, blend: int) -> np.ndarray:
    """Weight of the generated pixels: 0 outside the mask, ramping to 1 over `blend` pixels inside."""
    weight = fill.astype(np.float32)
    if blend <= 0:
        return weight
    # Distance into the mask, approximated by repeated erosion (cheap, enough for a few pixels).
    inside = Image.fromarray(fill.astype(np.uint8) * 255)
    depth = np.zeros(fill.shape, dtype=np.float32)
    current = inside
    for step in range(1, blend + 1):
        current = current.filter(ImageFilter.MinFilter(3))
        depth += np.asarray(current) > 127
    return np.where(fill, np.minimum(1.0, (depth + 1) / (blend + 1)), 0.0).astype(np.float32)


def compose(original: Image.Image, generated_rgb: np.ndarray, fill: np.ndarray, p: Plan, blend: int) -> Image.Image:
    """Paste the model's output back at the original size and mode; only masked pixels change."""
    up = Image.fromarray(generated_rgb).resize((p.side, p.side), Image.Resampling.BICUBIC
                                                 if p.side > p.model_size else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (original.width, original.height))
    canvas.paste(up, (p.box[0], p.box[1]))  # the parts of the box outside the image fall away
    generated = np.asarray(canvas).astype(np.float32)
    weight = feather(fill, blend)[..., None]
    rgb_original = np.asarray(to_rgb8(original)).astype(np.float32)
    mixed = generated * weight + rgb_original * (1 - weight)
    return _restore_mode(original, mixed, fill)


def _restore_mode(original: Image.Image, mixed_rgb: np.ndarray, fill: np.ndarray) -> Image.Image:
    """The composed RGB in the upload's mode, with every unmasked pixel copied from the upload."""
    mode = original.mode
    rgb8 = np.clip(mixed_rgb + 0.5, 0, 255).astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        out = np.array(original)
        out[..., :3][fill] = rgb8[fill]
        return Image.fromarray(out)
    if mode in ("L", "LA"):
        out = np.array(original)
        grey = np.asarray(Image.fromarray(rgb8).convert("L"))
        if mode == "L":
            out[fill] = grey[fill]
        else:
            out[..., 0][fill] = grey[fill]
        return Image.fromarray(out)
    if mode.startswith("I"):
        out = np.array(original)
        grey = np.asarray(Image.fromarray(rgb8).convert("L")).astype(np.float64)
        peak = 65535 if mode.startswith("I;16") or out.max() > 255 else 255
        out[fill] = np.round(grey[fill] / 255 * peak).astype(out.dtype)
        result = Image.fromarray(out)
        return result if result.mode == mode else result.convert(mode)
    if mode == "P":
        # Map the new pixels to the upload's own palette; unmasked indices stay as they were.
        out = np.array(original)
        palette_img = Image.new("P", (1, 1))
        palette_img.putpalette(original.getpalette())
        mapped = np.asarray(Image.fromarray(rgb8).quantize(palette=palette_img, dither=Image.Dither.NONE))
        out[fill] = mapped[fill]
        result = Image.frombytes("P", original.size, out.tobytes())
        result.putpalette(original.getpalette())
        if "transparency" in original.info:
            result.info["transparency"] = original.info["transparency"]
        return result
    out = np.array(original.convert("RGB"))
    out[fill] = rgb8[fill]
    return Image.fromarray(out)


OUTPUT_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


def encode(image: Image.Image, output_format: str) -> bytes:
    fmt, _ = OUTPUT_FORMATS[output_format]
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
