"""What the API reads from Redis, and the ledger calls it makes (the worker writes the rest)."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timezone

from redis import Redis
from rq import Worker

from worker import catalog, jobs, rqside, startup
from worker.ledger import Ledger

from .settings import ApiSettings

def queue_for(redis: Redis, model: str):
    return rqside.queue_for(redis, jobs.queue_name(model))


def job_timeout(redis: Redis, settings: ApiSettings, model: str, evaluations_per_sample: int) -> int:
    """RQ's 180 s default is far too short. A job's wall time is its evaluations per sample times
    the time of one batched forward pass (all its samples advance in the same pass), so the
    timeout scales with both, with room for a batch that grows while it runs."""
    if settings.job_timeout is not None:
        return settings.job_timeout
    measured = redis.get(jobs.speed_key(model))
    per_pass = float(measured) if measured is not None else settings.seconds_per_pass
    return max(settings.min_job_timeout, math.ceil(3 * per_pass * evaluations_per_sample + 60))


def valid_job_id(job_id: str) -> bool:
    try:
        uuid.UUID(job_id)
    except ValueError:
        return False
    return True


def read_job(ledger: Ledger, job_id: str) -> dict | None:
    """The job's record as the ledger keeps it (None: unknown or expired)."""
    if not valid_job_id(job_id):
        return None
    return ledger.read(job_id)


def result_bytes(redis: Redis, job_id: str, index: int) -> bytes | None:
    return redis.get(jobs.result_key(job_id, index))


def served_models(redis: Redis, settings: ApiSettings) -> dict[str, dict]:
    """Every model this API accepts jobs for: the configured ones (whether or not a worker is
    live, so that work can wait for workers to start) and any a live worker serves. A live
    worker's description wins: it says, for example, whether it runs with a classifier."""
    out = catalog.configured_entries(settings.model, settings.models)
    out.update(catalog.live_models(redis))
    return out


def unavailable_models(redis: Redis, settings: ApiSettings) -> dict[str, dict]:
    """The models this API is asked to serve that cannot take jobs now, each with `reason` (one line
    for people), `startup_failures` (why workers could not start it) and live `workers`: a
    configured model no worker can start (every one that tried failed, none is live), or one this
    process cannot read that no live worker describes."""
    live = catalog.live_models(redis)
    unreadable = catalog.unreadable_configured(settings.model, settings.models)
    names = set(catalog.served_models(settings.model, settings.models)) | set(live)
    out = {}
    for name in sorted(names):
        reason = unavailable_reason(redis, settings, name, live_entry=name in live, unreadable=unreadable.get(name))
        if reason is not None:
            out[name] = {"reason": reason, "startup_failures": startup.failures(redis, name),
                         "workers": Worker.count(connection=redis, queue=queue_for(redis, name))}
    return out


def unavailable_reason(redis: Redis, settings: ApiSettings, model: str, *, live_entry: bool | None = None,
                       unreadable: str | None = None) -> str | None:
    """Why jobs for `model` cannot be taken now (None: they can, or the model is unknown here)."""
    failures = startup.failures(redis, model)
    if failures:
        workers = Worker.count(connection=redis, queue=queue_for(redis, model))
        if workers == 0:
            return startup.summary(model, failures, workers) + ": fix the model and restart its workers"
        return None
    if live_entry is None:
        live_entry = model in catalog.live_models(redis)
    if unreadable is None and not live_entry:
        unreadable = catalog.unreadable_configured(settings.model, settings.models).get(model)
    if unreadable is not None and not live_entry:
        return (f"model {model} is configured but this API cannot read it ({unreadable}), and no worker "
                f"describes it yet: jobs are taken once a worker serves it")
    return None


def worker_counts(redis: Redis, model: str) -> tuple[int, list[dict]]:
    """Live RQ workers on the model's queue, and the model's workers that declared themselves
    defunct within the last hour (they exit; their reports stay for operators to read)."""
    workers = Worker.count(connection=redis, queue=queue_for(redis, model))
    defunct = []
    for key in redis.scan_iter(match=jobs.defunct_key("*"), count=1000):
        raw = redis.get(key)
        if raw is not None and json.loads(raw).get("model") == model:
            defunct.append(json.loads(raw))
    return workers, defunct


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()
