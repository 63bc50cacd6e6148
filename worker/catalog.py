"""What the API knows of each model without a worker: names, sizes, defaults, what they are for
(torch-free).

The API accepts jobs for every model it is configured to serve (`REPAINT_MODEL` plus
`REPAINT_MODELS`: preset names, diffusers folders, `name=folder`) whether or not a worker is live,
so that work can wait in the queue while workers start or scale up from zero. A live worker's own
description (which also says whether it was started with a classifier) takes precedence. The
entries come from `models.registry` (presets) and `models.diffusers_folder` (folders), which the
worker's loader reads too, so the two cannot disagree.
"""

from __future__ import annotations

import functools
import json
import logging
import time

from models.config import ConfigError
from models.registry import PRESETS, ModelRef, parse_model_refs, resolve_model

from . import jobs

log = logging.getLogger(__name__)

# Workers refresh their model's entry every few seconds; an entry older than this is of workers gone.
MODEL_ENTRY_STALE_SECONDS = 300

MODELS: dict[str, dict] = {name: p.describe(classifier=p.has_classifier) for name, p in PRESETS.items()}


def served_models(default: str, extra: str) -> list[str]:
    """The model names an API is configured to accept: the default plus a comma-separated list."""
    return [ref.name for ref in parse_model_refs(default, extra)]


def default_model_name(default: str) -> str:
    """The name of the model REPAINT_MODEL refers to (a preset name, or a folder's model name)."""
    return parse_model_refs(default, "")[0].name


def configured_entries(default: str, extra: str) -> dict[str, dict]:
    """Descriptions of the configured models that can be read here. A folder this process cannot
    read (mounted only where the workers run) is left out with a warning: a live worker's entry
    describes it once one starts (`unreadable_configured` says why it is left out)."""
    out = {}
    for ref in parse_model_refs(default, extra):
        entry = describe_ref(ref)
        if entry is not None:
            out[ref.name] = entry
    return out


def unreadable_configured(default: str, extra: str) -> dict[str, str]:
    """The configured models this process cannot describe, with why (a folder's config or weights)."""
    return {ref.name: why for ref in parse_model_refs(default, extra) if (why := _described(ref)[1]) is not None}


def describe_ref(ref: ModelRef) -> dict | None:
    """A model's entry (read once per process: a folder's files are read at the first request)."""
    return _described(ref)[0]


@functools.lru_cache(maxsize=256)
def _described(ref: ModelRef) -> tuple[dict | None, str | None]:
    if ref.folder is None:
        return MODELS[ref.name], None
    try:
        return resolve_model(ref).describe(classifier=False), None
    except ConfigError as exc:
        log.warning("model %s (%s) cannot be described here, waiting for a worker's entry: %s",
                    ref.name, ref.folder, exc)
        return None, str(exc)


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
