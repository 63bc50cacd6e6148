"""Procedural faces: deterministic per seed, with the parameters kept for semantic evaluation.

What the demo model `faces32` was trained on (training/ draws its data here) and what the API's
examples for it show (service/examples.py): beside the serving code, so that serving needs
nothing from training/.

Each face has a background gradient, a head (ellipse) in a skin colour, hair on top, two eyes
that mirror each other in position, size and colour, and a mouth. Shapes are drawn at 4x and
box-filtered down, so edges are anti-aliased. Training seeds and evaluation seeds come from
disjoint ranges (`TRAIN_SEEDS`, `EVAL_SEEDS`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
TRAIN_SEEDS = range(0, 10_000_000)
EVAL_SEEDS = range(10_000_000, 20_000_000)

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class FaceParams:
    """Geometry in output pixels (floats), colours as RGB 0..255."""

    size: int
    background_top: Colour
    background_bottom: Colour
    head_cx: float
    head_cy: float
    head_rx: float
    head_ry: float
    skin: Colour
    hair: Colour
    hair_depth: float  # how far down the head the hair reaches, as a fraction of head_ry
    eye_dx: float      # horizontal distance of each eye from the head's centre
    eye_y: float
    eye_r: float
    eye_colour: Colour
    mouth_y: float
    mouth_w: float
    mouth_h: float
    mouth_colour: Colour

    def eye_centres(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(left, right) eye centres in image coordinates."""
        return (self.head_cx - self.eye_dx, self.eye_y), (self.head_cx + self.eye_dx, self.eye_y)

    def to_dict(self) -> dict:
        return asdict(self)


def _colour(rng: random.Random, lo: int = 0, hi: int = 255) -> Colour:
    return tuple(rng.randint(lo, hi) for _ in range(3))  # type: ignore[return-value]


def _skin(rng: random.Random) -> Colour:
    # Warm tones of varied lightness, plus the occasional fantasy colour.
    if rng.random() < 0.15:
        return _colour(rng, 60, 230)
    light = rng.uniform(0.35, 1.0)
    return (int(235 * light + 10), int(190 * light + 5), int(150 * light))


def face_params(seed: int, size: int = 32) -> FaceParams:
    rng = random.Random(seed)
    s = size / 32.0
    head_cx = size / 2 + rng.uniform(-1.5, 1.5) * s
    head_cy = size / 2 + rng.uniform(0.0, 2.0) * s
    head_rx = rng.uniform(8.5, 11.5) * s
    head_ry = rng.uniform(10.5, 13.0) * s
    eye_y = head_cy - rng.uniform(1.0, 3.5) * s
    return FaceParams(
        size=size,
        background_top=_colour(rng), background_bottom=_colour(rng),
        head_cx=head_cx, head_cy=head_cy, head_rx=head_rx, head_ry=head_ry,
        skin=_skin(rng), hair=_colour(rng, 0, 200), hair_depth=rng.uniform(0.25, 0.6),
        eye_dx=rng.uniform(3.2, 5.0) * s, eye_y=eye_y, eye_r=rng.uniform(1.3, 2.3) * s,
        eye_colour=_colour(rng, 0, 220),
        mouth_y=head_cy + rng.uniform(4.0, 6.5) * s, mouth_w=rng.uniform(2.5, 5.0) * s,
        mouth_h=rng.uniform(0.8, 1.8) * s, mouth_colour=(rng.randint(120, 230), rng.randint(0, 90), rng.randint(20, 110)),
    )


def render(p: FaceParams) -> Image.Image:
    big = p.size * SUPERSAMPLE
    k = SUPERSAMPLE
    top = np.array(p.background_top, dtype=np.float32)
    bottom = np.array(p.background_bottom, dtype=np.float32)
    ramp = np.linspace(0, 1, big, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (big, big, 3)).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(canvas), "RGB")
    draw = ImageDraw.Draw(img)

    def ellipse(cx, cy, rx, ry, colour):
        draw.ellipse([(cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k], fill=colour)

    # Hair: a slightly larger ellipse behind the head, visible above it.
    ellipse(p.head_cx, p.head_cy - 1.2 * p.size / 32, p.head_rx + 1.2 * p.size / 32, p.head_ry + 0.8 * p.size / 32, p.hair)
    ellipse(p.head_cx, p.head_cy, p.head_rx, p.head_ry, p.skin)
    # Fringe: the hair colour over the top of the head, down to hair_depth.
    fringe_bottom = p.head_cy - p.head_ry + 2 * p.head_ry * p.hair_depth * 0.5
    hair_mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(hair_mask).ellipse([(p.head_cx - p.head_rx) * k, (p.head_cy - p.head_ry) * k,
                                       (p.head_cx + p.head_rx) * k, (p.head_cy + p.head_ry) * k], fill=255)
    ImageDraw.Draw(hair_mask).rectangle([0, fringe_bottom * k, big, big], fill=0)
    img.paste(Image.new("RGB", img.size, p.hair), mask=hair_mask)
    for cx, cy in p.eye_centres():
        ellipse(cx, cy, p.eye_r, p.eye_r, p.eye_colour)
    ellipse(p.head_cx, p.mouth_y, p.mouth_w, p.mouth_h, p.mouth_colour)
    return img.resize((p.size, p.size), Image.Resampling.BOX)


def face(seed: int, size: int = 32) -> tuple[np.ndarray, FaceParams]:
    """(H x W x 3 uint8 image, its parameters) for one seed."""
    p = face_params(seed, size)
    return np.asarray(render(p)), p


def face_batch(seeds, size: int = 32) -> np.ndarray:
    """[N x 3 x H x W] uint8 for the given seeds."""
    return np.stack([face(s, size)[0] for s in seeds]).transpose(0, 3, 1, 2).copy()
