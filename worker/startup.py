"""Why workers could not start serving their model, on record in Redis: a startup failure is state,
not only a log line.

A worker that cannot load its model (a missing or truncated weights file, a folder it cannot read) or
whose self-test pass fails records why, under its model, keyed by where it runs (its
REPAINT_WORKER_NAME, else its host): a worker restarted in a loop by its orchestrator keeps one entry,
renewed. A worker that starts serving clears its own entry. `/readyz`, `GET /models`, `POST /inpaint`
(which refuses jobs for a model that every worker failed to start), `python -m worker.health`, the
page and `repaint submit` read them.
"""

from __future__ import annotations

import json
import logging
import time

from redis import Redis

from . import jobs

log = logging.getLogger(__name__)

# An entry lasts a day after its last failure: long enough for an operator to read, short enough
# that a host gone for good stops being reported.
FAILURE_TTL = 24 * 3600


def record(redis: Redis, model: str, where: str, stage: str, reason: str) -> None:
    """`stage`: "load" (the weights or the folder) or "self-test" (the first forward pass). Best
    effort: a Redis that cannot be reached must not hide the reason, which the worker logs anyway."""
    entry = {"model": model, "where": where, "stage": stage, "reason": reason, "since": time.time()}
    try:
        key = jobs.startup_failures_key(model)
        previous = redis.hget(key, where)
        if previous is not None and json.loads(previous).get("reason") == reason:
            entry["since"] = json.loads(previous)["since"]  # the same failure again: since when it first came
        with redis.pipeline() as pipe:
            pipe.hset(key, where, json.dumps(entry))
            pipe.expire(key, FAILURE_TTL)
            pipe.execute()
    except Exception as exc:  # noqa: BLE001 - the worker is exiting with the reason logged
        log.warning("could not record the startup failure in Redis: %s", exc)


def clear(redis: Redis, model: str, where: str) -> None:
    """This worker serves its model now: its earlier failure is over."""
    redis.hdel(jobs.startup_failures_key(model), where)


def failures(redis: Redis, model: str) -> list[dict]:
    """The model's startup failures on record, oldest first."""
    entries = [json.loads(raw) for raw in redis.hvals(jobs.startup_failures_key(model))]
    return sorted(entries, key=lambda e: e["since"])


def summary(model: str, entries: list[dict], workers: int) -> str:
    """One line for people: "model broken: cannot load: ... (at vm-1 since 12:03:10 UTC); 0 workers"."""
    newest = entries[-1]
    when = time.strftime("%H:%M:%S UTC", time.gmtime(newest["since"]))
    more = f" (and {len(entries) - 1} other place(s))" if len(entries) > 1 else ""
    return f"model {model}: {what_failed(newest)} (at {newest['where']}{more}, since {when}); {workers} live worker(s)"


def what_failed(entry: dict) -> str:
    """"cannot load: <reason>" or "its self-test pass fails: <reason>"."""
    return f"{'cannot load' if entry['stage'] == 'load' else 'its self-test pass fails'}: {entry['reason']}"
