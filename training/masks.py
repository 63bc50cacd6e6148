"""The paper's mask families at any size, deterministic per seed. 1 = known pixel (keep mask).

wide and narrow: random thick boxes and thin strokes (the LaMa-style masks of the paper),
every second line, half (left half unknown), expand (only a centre square known: a quarter
of the side, like 64 of 256 in the paper), and 2x super-resolution (every second pixel known).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

FAMILIES = ("wide", "narrow", "every_second_line", "half", "expand", "super_resolution")


def keep_mask(family: str, size: int = 32, seed: int = 0) -> np.ndarray:
    """[H x W] float32 keep mask (1 = known) of one family."""
    rng = random.Random(seed)
    keep = np.ones((size, size), dtype=np.float32)
    if family == "wide":
        unknown = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(unknown)
        for _ in range(rng.randint(2, 3)):
            w, h = rng.randint(size // 4, size // 2), rng.randint(size // 4, size // 2)
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            draw.rectangle([x, y, x + w, y + h], fill=255)
        keep[np.asarray(unknown) > 0] = 0
    elif family == "narrow":
        unknown = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(unknown)
        for _ in range(rng.randint(4, 6)):
            points = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(rng.randint(2, 4))]
            draw.line(points, fill=255, width=rng.randint(1, 2))
        keep[np.asarray(unknown) > 0] = 0
    elif family == "every_second_line":
        keep[1::2, :] = 0
    elif family == "half":
        keep[:, : size // 2] = 0
    elif family == "expand":
        keep[:] = 0
        lo, hi = 3 * size // 8, 5 * size // 8
        keep[lo:hi, lo:hi] = 1
    elif family == "super_resolution":
        keep[:] = 0
        keep[::2, ::2] = 1
    else:
        raise ValueError(f"unknown mask family {family!r}; known: {FAMILIES}")
    return keep


def eye_mask(params, size: int = 32, margin: float = 1.5) -> np.ndarray:
    """Keep mask with the left eye (and a margin around it) unknown."""
    (cx, cy), _ = params.eye_centres()
    r = params.eye_r + margin
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    keep = np.ones((size, size), dtype=np.float32)
    keep[(np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)] = 0
    return keep
