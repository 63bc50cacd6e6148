"""Example inputs for `repaint example`: an image and a mask suited to a model (numpy + Pillow, no torch).

- `faces32` (and `tiny`, and any model of 64 px or less): a held-out face of the procedural face
  generator the demo model was trained on (`service/faces.py`), drawn at 4x the model's size so it
  can be seen, with a mask over one eye.
- `celeba256`: the same generator's face at 256x256, a mask over one eye.
- `places256`: a synthetic landscape with a house, the house masked.
- `imagenet256`: an orange on a table, the orange masked, with ImageNet class 950 ("orange").

Any photo (and a mask painted in any editor) works for the 256 px photo models; these pictures are
only there so a first request needs nothing but the service.

`example_for_model` picks the example for a `GET /models` entry (the page's "Try an example",
`GET /models/{name}/example`): the presets as above, and a diffusers folder only when its domain is
one we have a picture for (faces); for any other folder there is no honest example, so none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw

# The demo model's own face generator (torch-free), so the example is a face it knows.
from service.faces import EVAL_SEEDS, SUPERSAMPLE, Colour, face, face_params

# --- Examples ----------------------------------------------------------------------------------

# The first held-out face (never seen in training), the one the README's examples always used.
FACE_SEED = EVAL_SEEDS[0]
IMAGENET_ORANGE = 950  # ImageNet-1k class index of "orange"


@dataclass
class Example:
    image: Image.Image
    mask: Image.Image  # L, 0 or 255; white = fill
    shows: str         # what the image is
    hides: str         # what the mask covers
    form: dict = field(default_factory=dict)  # POST /inpaint fields the example needs (strategy, class_label)
    notes: list[str] = field(default_factory=list)


def face_example(size: int, model_size: int, seed: int = FACE_SEED) -> Example:
    """A held-out face at `size` px with a mask over the eye on the left of the picture.

    The mask is the square of 7x7 model pixels around the eye, on the model's pixel grid, so the
    model sees exactly the eye masked when the image is scaled to `model_size`.
    """
    img, _ = face(seed, size)
    p = face_params(seed, model_size)
    (x, y), _ = p.eye_centres()
    scale = size / model_size
    box = [(int(x) - 3) * scale, (int(y) - 3) * scale, (int(x) + 4) * scale - 1, (int(y) + 4) * scale - 1]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return Example(Image.fromarray(img), mask, shows=f"a held-out procedural face (generator seed {seed})",
                   hides="the eye on the left of the picture")


def _supersampled(size: int, draw_scene) -> Image.Image:
    k = SUPERSAMPLE
    img = Image.new("RGB", (size * k, size * k))
    draw_scene(img, ImageDraw.Draw(img), k)
    return img.resize((size, size), Image.Resampling.BOX)


def _vertical_gradient(draw: ImageDraw.ImageDraw, box, top: Colour, bottom: Colour) -> None:
    x0, y0, x1, y1 = box
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        draw.line([(x0, y), (x1 - 1, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))


def landscape_example(size: int = 256) -> Example:
    """Sky, sun, hills, a meadow and a house; the house (with a margin) is masked."""
    u = size / 256
    house = (150 * u, 132 * u, 214 * u, 188 * u)  # walls: x0, y0, x1, y1
    roof_top = 100 * u

    def scene(img, draw, k):
        s = size * k
        _vertical_gradient(draw, (0, 0, s, int(150 * u * k)), (92, 148, 220), (196, 222, 240))
        draw.ellipse([52 * u * k, 30 * u * k, 88 * u * k, 66 * u * k], fill=(255, 236, 150))
        draw.polygon([(0, 150 * u * k), (60 * u * k, 98 * u * k), (130 * u * k, 140 * u * k), (200 * u * k, 92 * u * k),
                      (s, 146 * u * k), (s, s), (0, s)], fill=(120, 138, 160))
        _vertical_gradient(draw, (0, int(150 * u * k), s, s), (104, 168, 72), (60, 120, 40))
        draw.ellipse([18 * u * k, 120 * u * k, 62 * u * k, 170 * u * k], fill=(40, 100, 44))  # a tree
        draw.rectangle([36 * u * k, 166 * u * k, 44 * u * k, 196 * u * k], fill=(96, 64, 40))
        x0, y0, x1, y1 = (v * k for v in house)
        draw.rectangle([x0, y0, x1, y1], fill=(228, 214, 190))
        draw.polygon([(x0 - 8 * u * k, y0), ((x0 + x1) / 2, roof_top * k), (x1 + 8 * u * k, y0)], fill=(168, 52, 40))
        draw.rectangle([x0 + 24 * u * k, y1 - 30 * u * k, x0 + 40 * u * k, y1], fill=(110, 70, 44))  # door
        draw.rectangle([x0 + 6 * u * k, y0 + 10 * u * k, x0 + 18 * u * k, y0 + 22 * u * k], fill=(150, 196, 230))
        draw.rectangle([x1 - 18 * u * k, y0 + 10 * u * k, x1 - 6 * u * k, y0 + 22 * u * k], fill=(150, 196, 230))

    mask = Image.new("L", (size, size), 0)
    margin = 6 * u
    ImageDraw.Draw(mask).rectangle([house[0] - 8 * u - margin, roof_top - margin, house[2] + 8 * u + margin,
                                    house[3] + margin], fill=255)
    return Example(_supersampled(size, scene), mask, shows="a synthetic landscape: sky, sun, hills, a tree and a house",
                   hides="the house")


def orange_example(size: int = 256) -> Example:
    """An orange on a wooden table against a wall; the orange (with a margin) is masked."""
    u = size / 256
    cx, cy, r = 128 * u, 150 * u, 46 * u

    def scene(img, draw, k):
        s = size * k
        _vertical_gradient(draw, (0, 0, s, int(170 * u * k)), (214, 206, 190), (176, 166, 150))
        _vertical_gradient(draw, (0, int(170 * u * k), s, s), (150, 98, 56), (112, 70, 38))
        for y in range(184, 256, 22):  # wood grain
            draw.line([(0, y * u * k), (s, (y + 6) * u * k)], fill=(128, 82, 44), width=max(1, int(2 * u * k)))
        draw.ellipse([(cx - r * 1.1) * k, (cy + r * 0.7) * k, (cx + r * 1.1) * k, (cy + r * 1.05) * k],
                     fill=(96, 60, 32))  # shadow
        for i in range(12):  # shading: lighter discs towards the top left
            f = 1 - i / 12
            rr = r * f
            ox, oy = cx - (r - rr) * 0.45, cy - (r - rr) * 0.45
            colour = (int(214 + 40 * (1 - f)), int(104 + 70 * (1 - f)), int(16 + 40 * (1 - f)))
            draw.ellipse([(ox - rr) * k, (oy - rr) * k, (ox + rr) * k, (oy + rr) * k], fill=colour)
        draw.ellipse([(cx + 2 * u) * k, (cy - r - 6 * u) * k, (cx + 22 * u) * k, (cy - r + 4 * u) * k],
                     fill=(60, 130, 40))  # leaf

    mask = Image.new("L", (size, size), 0)
    m = 10 * u
    ImageDraw.Draw(mask).rectangle([cx - r - m, cy - r - 8 * u - m, cx + r + m, cy + r + m], fill=255)
    return Example(_supersampled(size, scene), mask, shows="a synthetic still life: an orange on a wooden table",
                   hides="the orange", form={"class_label": IMAGENET_ORANGE})


FACE_UPSCALE = 4  # small models' examples are drawn at 4x the model's size, so they can be seen


def example_for(model: str, image_size: int, *, class_cond: bool = False) -> Example:
    """The example for a model named `model` with square inputs of `image_size` px."""
    if image_size <= 64:
        size = image_size * FACE_UPSCALE
        ex = face_example(size, image_size)
        # The whole face at the model's own 32 px: `auto` does the same for faces32 (framing
        # "whole"), not for `tiny`, whose `auto` would crop around the eye. Explicit for both.
        ex.form["strategy"] = "resize"
        ex.notes.append(f"The image is {size}x{size}, drawn at {FACE_UPSCALE}x the model's {image_size} px so it can "
                        f"be seen; the service scales it down to {image_size} px (strategy=resize) and the fill back up.")
        if model == "faces32":
            ex.notes.append("faces32 only knows these procedural cartoon faces: a photograph will not give a meaningful fill.")
        elif model == "tiny":
            ex.notes.append("tiny has random weights: it runs, but does not make meaningful images.")
        return ex
    if model == "places256":
        ex = landscape_example(image_size)
    elif model == "imagenet256" or class_cond:
        ex = orange_example(image_size)
        ex.notes.append(f"class_label {IMAGENET_ORANGE} is ImageNet's \"orange\"; give any of the 1000 classes to "
                        f"paint something else.")
    elif model == "celeba256":
        ex = _face_stand_in(image_size)
    else:
        ex = landscape_example(image_size)
    ex.notes.append(f"This picture is only a synthetic stand-in: any photo works (any size; the service crops "
                    f"or scales it to the model's {image_size} px), with a mask of the same size, white = fill.")
    return ex


def _face_stand_in(size: int) -> Example:
    """A procedural cartoon face at `size` px, as a stand-in for a model of face photographs."""
    ex = face_example(size, 32)
    ex.shows = f"a procedural cartoon face (generator seed {FACE_SEED}), drawn at {size}x{size}"
    return ex


def example_for_model(info: Mapping[str, Any]) -> Example | None:
    """The example for a model as `GET /models` describes it, or None when we have none like its
    training images (a diffusers folder of churches, cats, CIFAR objects, drawings or unknown data:
    a cartoon face or our landscape would only show it at its worst)."""
    name, size = info["name"], int(info["image_size"])
    if info.get("source", "preset") == "preset":
        return example_for(name, size, class_cond=bool(info.get("class_cond")))
    if not (info.get("photographic") and info.get("framing") == "whole" and "face" in info.get("domain", "").lower()):
        return None
    # A folder of aligned face photographs (CelebA-HQ, FFHQ): the face stand-in, as for celeba256.
    if size <= 64:
        ex = face_example(size * FACE_UPSCALE, size)
        ex.form["strategy"] = "resize"
    else:
        ex = _face_stand_in(size)
    ex.notes.append(f"This cartoon face is only a stand-in for the face photographs {name} was trained on: "
                    f"any aligned face photo works better (any size; a mask of the same size, white = fill).")
    return ex


def why_no_example(info: Mapping[str, Any]) -> str:
    """Why `example_for_model` has nothing for this model, in one sentence the API and the CLI share."""
    name, domain = info["name"], (info.get("domain") or "").strip()
    if not domain or domain.startswith("not stated"):
        trained_on = ("its folder does not say what it was trained on (a repaint.json with a 'domain' "
                      "says it)")
    else:
        trained_on = f"it was trained on {domain}"
    return (f"no example for model {name!r}: {trained_on}, and the service has no picture like those; "
            "open one of your own")
