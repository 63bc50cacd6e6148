"""What the API knows of each model without a worker: names, sizes, defaults (torch-free).

The API accepts jobs for every model it is configured to serve (`REPAINT_MODEL` plus
`REPAINT_MODELS`) whether or not a worker is live, so that work can wait in the queue while
workers start or scale up from zero. A live worker's own description (which also says whether
it was started with a classifier) takes precedence. A test checks these entries against the
presets in `models/presets.py`, which hold the networks' full confs.
"""

from __future__ import annotations

import json
import time

from . import jobs

# Workers refresh their model's entry every few seconds; an entry older than this is of workers gone.
MODEL_ENTRY_STALE_SECONDS = 300

_PAPER_DEFAULTS = {"steps": 250, "jump_length": 10, "jump_n_sample": 10, "n_sample": 1, "classifier_scale": 0.0}


def _entry(name: str, description: str, image_size: int, *, class_cond: bool = False,
           classifier: bool = False, classifier_scale: float = 0.0, framing: str = "region") -> dict:
    return {"name": name, "description": description, "image_size": image_size, "class_cond": class_cond,
            "num_classes": 1000 if class_cond else None, "classifier": classifier, "diffusion_steps": 1000,
            "framing": framing, "defaults": {**_PAPER_DEFAULTS, "classifier_scale": classifier_scale}}


MODELS: dict[str, dict] = {e["name"]: e for e in (
    _entry("celeba256", "CelebA-HQ faces, 256x256 (official RePaint checkpoint)", 256, framing="whole"),
    _entry("places256", "Places2 scenes, 256x256 (official RePaint checkpoint)", 256),
    _entry("imagenet256", "ImageNet, 256x256, class-conditional with a noisy classifier "
                          "(official guided-diffusion checkpoints)", 256,
           class_cond=True, classifier=True, classifier_scale=1.0),
    _entry("faces32", "Procedural cartoon faces, 32x32, trained here on CPU (python -m training.train); "
                      "the demo model that `repaint serve` uses by default", 32, framing="whole"),
    _entry("tiny", "Tiny random-weight 32x32 UNet (reference tiny_unet_A layout); "
                   "for tests and first runs, it does not produce meaningful images", 32),
)}


def served_models(default: str, extra: str) -> list[str]:
    """The model names an API is configured to accept: the default plus a comma-separated list."""
    names = [default] + [n.strip() for n in extra.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def live_models(redis) -> dict[str, dict]:
    """Descriptions announced by live workers (entries refreshed within MODEL_ENTRY_STALE_SECONDS)."""
    now = time.time()
    out = {}
    for name, raw in redis.hgetall(jobs.models_key()).items():
        info = json.loads(raw)
        if now - info.get("seen_at", now) <= MODEL_ENTRY_STALE_SECONDS:
            out[name.decode()] = info
    return out


def prune_stale_models(redis) -> list[str]:
    """Drop the entries of models no worker has announced for a while; returns their names."""
    now = time.time()
    stale = [name for name, raw in redis.hgetall(jobs.models_key()).items()
             if now - json.loads(raw).get("seen_at", now) > MODEL_ENTRY_STALE_SECONDS]
    if stale:
        redis.hdel(jobs.models_key(), *stale)
    return [n.decode() for n in stale]
