"""Any size and shape: from an uploaded photo to the model's square input and back.

Strategies:
- `crop`: a square region around the mask's bounding box, with context around it, scaled to
  the model's resolution, inpainted, scaled back and pasted in. Best when the mask is small
  compared with the image: the model sees the damage at the highest resolution.
- `resize`: the whole image, padded to a square (the padding is generated and thrown away, so
  the aspect ratio is kept), scaled to the model's resolution. For masks that span the image.
- `auto`: for models of whole subjects (`framing="whole"`: the face models, trained on whole
  aligned faces, which a crop around an eye would show half a face) `resize`; for the others
  `crop` when a square crop with context fits inside the image, else `resize`.

The model never sees what is under the mask: masked pixels are replaced by a smooth fill made
from the known pixels around them before the region is scaled (`model_input`), so no pixel of
a result depends on the hidden content (worker.blending pastes the fill back the same way).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from .params import STRATEGIES
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


def plan(width: int, height: int, fill: np.ndarray, model_size: int, strategy: str = "auto",
         framing: str = "region") -> Plan:
    """Choose the square region the model will see. `fill` is [H x W] bool, True = to fill."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    x0, y0, x1, y1 = mask_bbox(fill)
    longer = max(x1 - x0, y1 - y0)
    # The crop: the box with context, at least the model's size when the image allows it.
    side = max(math.ceil(longer * (1 + 2 * CONTEXT)), min(model_size, width, height))
    fits = side <= min(width, height)
    if strategy == "crop" or (strategy == "auto" and fits and framing != "whole"):
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


def level_peak(values: np.ndarray, mode: str) -> float:
    """The white level of an integer greyscale image: 65535 for 16-bit modes (and 32-bit images
    holding 16-bit values), else 255."""
    return 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0


def to_l8(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit greyscale image as 8-bit L, scaled (Pillow's own convert clips at 255,
    which turns a 16-bit photo white)."""
    arr = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(arr / level_peak(arr, image.mode) * 255 + 0.5, 0, 255).astype(np.uint8))


def to_rgb8(image: Image.Image) -> Image.Image:
    """The model's view of any upload: 8-bit RGB (alpha dropped, 16-bit scaled down)."""
    if image.mode.startswith("I"):
        return to_l8(image).convert("RGB")
    return image.convert("RGB")


def neutral_fill(rgb: np.ndarray, known: np.ndarray, work_side: int = 512) -> np.ndarray:
    """`rgb` [H x W x 3] with every unknown pixel replaced by a local average of the known ones,
    so that scaling the region mixes nothing hidden into the known pixels at the mask's edge,
    and no hard edge either. Normalised convolution (blur of known pixels / blur of the known
    mask) at a coarse and a fine scale, computed at most `work_side` pixels a side: the fill is
    smooth, so a small version scaled up is as good and large photos stay cheap."""
    if known.all():
        return rgb
    if not known.any():
        return np.full_like(rgb, 127)
    h, w = known.shape
    factor = min(1.0, work_side / max(h, w))
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    # Only known pixels are averaged down: hidden ones are zeroed first, and the known mask is
    # averaged the same way to normalise (8-bit area averages: a fraction of a level off at most).
    only_known = np.where(known[..., None], rgb, 0).astype(np.uint8)
    num = np.asarray(Image.fromarray(only_known).resize(size, Image.Resampling.BOX), dtype=np.float64)
    den = np.asarray(Image.fromarray(known.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX),
                     dtype=np.float64) / 255
    filled = (num.sum((0, 1)) / max(den.sum(), 1e-6))[None, None, :] * np.ones((*den.shape, 1))
    for radius in (max(size) / 8, max(size) / 32):
        blurred_den = _blur(den, max(1.0, radius))
        local = np.stack([_blur(num[..., c], max(1.0, radius)) for c in range(3)], -1)
        local /= np.maximum(blurred_den, 1e-6)[..., None]
        filled = np.where(blurred_den[..., None] > 1e-3, local, filled)  # the finer scale refines near known pixels
    small = Image.fromarray(np.clip(filled + 0.5, 0, 255).astype(np.uint8))
    full = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))
    out = rgb.copy()
    out[~known] = full[~known]
    return out


def _blur(channel: np.ndarray, radius: float) -> np.ndarray:
    """About a Gaussian of this radius: three box blurs along each axis (zero outside)."""
    out = channel.astype(np.float64)
    width = max(1, int(round(radius)))
    for axis in (0, 1):
        for _ in range(3):
            out = _box(out, width, axis)
    return out


def _box(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Sum over a window of 2r+1 along `axis` (cumulative sums: cost independent of r)."""
    a = np.moveaxis(a, axis, 0)
    padded = np.concatenate([np.zeros((r + 1, *a.shape[1:])), a, np.zeros((r, *a.shape[1:]))])
    c = np.cumsum(padded, axis=0)
    return np.moveaxis(c[2 * r + 1:] - c[:-(2 * r + 1)], 0, axis) / (2 * r + 1)


def model_input(image: Image.Image, fill: np.ndarray, p: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [S x S x 3], keep [S x S] bool) for the model; padding counts as unknown.

    Masked pixels never reach the model: they are replaced by `neutral_fill` before scaling."""
    x0, y0, x1, y1 = p.box
    window = np.ones((p.side, p.side), dtype=bool)  # True = to fill (the mask, and padding)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height)
    window[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = fill[iy0:iy1, ix0:ix1]
    region = np.asarray(to_rgb8(image).crop(p.box))
    region = neutral_fill(region, ~window)
    scaled = Image.fromarray(region).resize((p.model_size, p.model_size), Image.Resampling.LANCZOS
                                            if p.side > p.model_size else Image.Resampling.BICUBIC)
    # A model pixel is known only if every image pixel under it is known and inside the image.
    coverage = np.asarray(Image.fromarray(window.astype(np.uint8) * 255).resize(
        (p.model_size, p.model_size), Image.Resampling.BOX))
    return np.asarray(scaled), coverage == 0
