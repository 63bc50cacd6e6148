"""Pasting the model's fill back into the upload, without a seam and without a leak.

The fill is made at the model's resolution and scaled up, so where it meets the photo there is
an edge between a soft fill and sharp pixels. A band of `blend` pixels *outside* the mask
(what other inpainting tools call mask blur) fades from the fill at the mask's edge to the
photo: weight 1 inside the mask, a smooth ramp to 0 at `blend` pixels from it.

What each pixel of a result is:
- inside the mask (after `mask_dilate`): the fill only, alpha opaque. Nothing under the mask
  is ever read, so results do not depend on what was hidden;
- within `blend` pixels outside the mask: a mix of the fill and the known pixel;
- farther than `blend` pixels from the mask horizontally or vertically (max(|dx|, |dy|) > blend):
  the uploaded pixel, bit for bit, in its mode.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .geometry import Plan, level_peak, to_rgb8


def band_weights(fill: np.ndarray, blend: int) -> np.ndarray:
    """Weight of the fill per pixel: 1 in the mask, ramping smoothly to 0 at `blend` pixels
    outside it (distance by alternating square and cross dilations: an octagon, near a circle)."""
    weight = fill.astype(np.float32)
    if blend <= 0 or not fill.any():
        return weight
    # Only the mask's bounding box grown by the band can change: work there.
    ys, xs = np.nonzero(fill)
    y0, y1 = max(int(ys.min()) - blend - 1, 0), min(int(ys.max()) + blend + 2, fill.shape[0])
    x0, x1 = max(int(xs.min()) - blend - 1, 0), min(int(xs.max()) + blend + 2, fill.shape[1])
    reached = fill[y0:y1, x0:x1].copy()
    distance = np.zeros(reached.shape, dtype=np.float32)
    for step in range(1, blend + 1):
        grown = _dilate_square(reached) if step % 2 else _dilate_cross(reached)
        distance[grown & ~reached] = step
        reached = grown
    ramp = 1 - distance / (blend + 1)
    smooth = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible start or end of the band
    window = np.where(fill[y0:y1, x0:x1], 1.0, np.where(distance > 0, smooth, 0.0))
    weight[y0:y1, x0:x1] = window
    return weight


def _dilate_square(mask: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 127


def _dilate_cross(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def compose(original: Image.Image, generated_rgb: np.ndarray, fill: np.ndarray, p: Plan, blend: int,
            weight: np.ndarray | None = None) -> Image.Image:
    """The model's output pasted back at the original size and mode (see the module's doc).
    `weight`: `band_weights(fill, blend)` when the caller already has it (one per job)."""
    up = Image.fromarray(generated_rgb).resize((p.side, p.side), Image.Resampling.BICUBIC
                                                 if p.side > p.model_size else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (original.width, original.height))
    canvas.paste(up, (p.box[0], p.box[1]))  # the parts of the box outside the image fall away
    weight = band_weights(fill, blend) if weight is None else weight
    return _in_mode(original, np.asarray(canvas).astype(np.float32), weight, fill)


def _mix(generated: np.ndarray, known: np.ndarray, weight: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Fill and known pixels mixed by weight; inside the mask the fill alone (the known value
    there is hidden content and is not read at all)."""
    w = weight if generated.ndim == 2 else weight[..., None]
    mask = fill if generated.ndim == 2 else fill[..., None]
    return np.where(mask, generated, generated * w + known * (1 - w))


def _in_mode(original: Image.Image, generated: np.ndarray, weight: np.ndarray, fill: np.ndarray) -> Image.Image:
    """The composed result in the upload's mode; pixels with weight 0 are copied from the upload."""
    mode = original.mode
    changed = weight > 0
    if mode in ("RGB", "RGBA"):
        out = np.array(original)
        known = np.asarray(to_rgb8(original)).astype(np.float32)
        mixed = _to8(_mix(generated, known, weight, fill))
        out[..., :3][changed] = mixed[changed]
        if mode == "RGBA":
            out[..., 3][fill] = 255  # the fill is opaque, whatever the alpha under the mask was
        return Image.fromarray(out)
    grey = np.asarray(Image.fromarray(_to8(generated)).convert("L")).astype(np.float32)
    if mode in ("L", "LA"):
        out = np.array(original)
        values = out if mode == "L" else out[..., 0]
        mixed = _to8(_mix(grey, values.astype(np.float32), weight, fill))
        values[changed] = mixed[changed]
        if mode == "LA":
            out[..., 1][fill] = 255
        return Image.fromarray(out)
    if mode.startswith("I"):
        out = np.array(original)
        mixed = _mix(grey / 255 * level_peak(out, mode), out.astype(np.float32), weight, fill)
        out[changed] = np.round(mixed[changed]).astype(out.dtype)
        result = Image.fromarray(out)
        return result if result.mode == mode else result.convert(mode)
    if mode == "P":
        # New pixels are mapped to the upload's own palette; unchanged indices stay as they were.
        out = np.array(original)
        known = np.asarray(original.convert("RGB")).astype(np.float32)
        mixed = _to8(_mix(generated, known, weight, fill))
        palette_img = Image.new("P", (1, 1))
        palette_img.putpalette(original.getpalette())
        mapped = np.asarray(Image.fromarray(mixed).quantize(palette=palette_img, dither=Image.Dither.NONE))
        out[changed] = mapped[changed]
        result = Image.frombytes("P", original.size, out.tobytes())
        result.putpalette(original.getpalette())
        if "transparency" in original.info:
            result.info["transparency"] = original.info["transparency"]
        return result
    out = np.array(original.convert("RGB"))
    mixed = _to8(_mix(generated, out.astype(np.float32), weight, fill))
    out[changed] = mixed[changed]
    return Image.fromarray(out)


def _to8(values: np.ndarray) -> np.ndarray:
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)
