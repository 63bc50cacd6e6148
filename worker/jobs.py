"""The job contract shared by the API and the workers: statuses, Redis keys, record fields.

Torch-free on purpose: the API imports this module and must stay small and start fast. The
API enqueues `TASK_PATH` by its dotted path, so it never imports the worker's code. Job
parameters live in `worker.params`; every change of a job's status goes through `worker.ledger`.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any

from redis.commands.core import Script

TASK_PATH = "worker.tasks.inpaint"
PREFIX = "repaint"

# The tenant of a service without API keys, and of records written before tenants existed.
ANONYMOUS = "anonymous"


class JobStatus(str, enum.Enum):
    """queued -> running -> succeeded | failed; queued | running -> canceled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


def queue_name(model: str) -> str:
    """One RQ queue per model: a worker holds one model and listens on its queue."""
    return f"inpaint-{model}"


def model_of_queue(name: str) -> str:
    """The model whose queue is `name` (queue_name's inverse)."""
    return name.removeprefix("inpaint-")


def job_key(job_id: str) -> str:
    """Hash with the job's record: status, parameters, timestamps, progress, error."""
    return f"{PREFIX}:job:{job_id}"


def input_key(job_id: str, name: str) -> str:
    """Bytes of an upload: 'image' as the client sent them (PNG, JPEG or WebP), 'mask' as a
    1-bit PNG of the region to fill."""
    return f"{PREFIX}:job:{job_id}:{name}"


def result_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:job:{job_id}:result:{index}"


def preview_key(job_id: str) -> str:
    """PNG of the latest x0 estimate of a running job (the model's view, sample 0)."""
    return f"{PREFIX}:job:{job_id}:preview"


def events_channel(job_id: str) -> str:
    """Pub/sub channel of a job's events: status, progress, preview. Each message is the event's
    JSON with the id of its entry in `events_key`: {"id", "event", "data"}."""
    return f"{PREFIX}:events:{job_id}"


def events_key(job_id: str) -> str:
    """Stream of a job's events (field `event`: {"event", "data"} JSON), capped at about
    EVENTS_MAXLEN entries: the entry ids are the SSE event ids, and a client that reconnects
    with Last-Event-ID is sent the entries after it."""
    return f"{PREFIX}:job:{job_id}:events"


# Entries a job's event stream keeps (trimmed with MAXLEN ~, so a little more): minutes of
# progress and previews, enough for a client to reconnect after a dropped connection.
EVENTS_MAXLEN = 200

# Longest life of an event stream after its latest event. The script never lets the stream
# outlive the job's record when the record has a TTL (a finished one: result_ttl, 24 h by
# default, so with the defaults the record's TTL is what applies). This bound covers an event
# written while the record has none (never by the ledger) and caps a stream whose record lives
# long (a job queued for days, a longer result_ttl), so streams never pile up: a client that
# reconnects after its stream expired is sent the job's state instead.
EVENTS_TTL = 2 * 24 * 3600

# A Lua function shared by the scripts that write events: append the event to the job's stream
# (trimmed to about `maxlen`), let the stream live `ttl` seconds or as long as the job's record
# if that is shorter, and publish it with its entry id spliced into the JSON. Returns the id.
EVENT_LUA = """
local function append_event(stream, record, channel, payload, maxlen, ttl)
  local id = redis.call('xadd', stream, 'MAXLEN', '~', maxlen, '*', 'event', payload)
  local life = tonumber(ttl)
  local left = redis.call('ttl', record)
  if left > 0 and left < life then life = left end
  redis.call('expire', stream, life)
  redis.call('publish', channel, '{"id":"' .. id .. '",' .. string.sub(payload, 2))
  return id
end
"""

# KEYS: events stream, record. ARGV: channel, event JSON ({"event", "data"}), maxlen, ttl.
# Returns the entry id. Bound to no client: it always runs on the caller's pipeline, which loads
# it before a MULTI's EXEC if Redis lacks it.
_PUBLISH = Script(None, (EVENT_LUA + """
return append_event(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
""").encode())


def publish(pipe, job_id: str, event: str, data: dict, ttl: int = EVENTS_TTL) -> None:
    """Queue one event on `pipe` (a Redis pipeline, in a MULTI or not, or a client): appended to
    the job's stream and published with its id, in one script, so that no listener sees an event
    the stream lacks. `ttl` bounds the stream's life after this event (see EVENTS_TTL)."""
    _PUBLISH(keys=[events_key(job_id), job_key(job_id)],
             args=[events_channel(job_id), event_json(event, data), EVENTS_MAXLEN, ttl], client=pipe)


def event_json(event: str, data: dict) -> str:
    """An event as it is stored and published (without its id)."""
    return dumps({"event": event, "data": data})


def models_key() -> str:
    """Hash model name -> JSON description with `seen_at`, refreshed by live workers."""
    return f"{PREFIX}:models"


def lease_key(job_id: str, token: str) -> str:
    """Exists (with a TTL) while the execution `token` of a running job shows signs of life."""
    return f"{PREFIX}:lease:{job_id}:{token}"


def running_key() -> str:
    """Set of `<job id>|<execution token>` of every running job: where the reaper looks for lost leases."""
    return f"{PREFIX}:running"


def idempotency_key(key: str) -> str:
    return f"{PREFIX}:idempotency:{key}"


def defunct_key(worker_name: str) -> str:
    """Why a worker declared itself broken (repeated forward-pass failures, a stalled loop)."""
    return f"{PREFIX}:defunct:{worker_name}"


# A field of each worker's RQ hash (`rq:worker:<name>`): the state of its REPAINT_COMPILE
# ("eager", "compiling", "compiled", "failed: <reason>"), renewed with its heartbeats.
WORKER_COMPILE_FIELD = "repaint_compile"


def startup_failures_key(model: str) -> str:
    """Hash: where (a worker's host or name) -> why a worker there could not start serving `model`
    (worker.startup)."""
    return f"{PREFIX}:startup-failures:{model}"


def speed_key(model: str) -> str:
    """Measured seconds per batched forward pass (one evaluation of every sample in flight).

    A job's wall time is its evaluations per sample times this, whatever its batch neighbours:
    the API derives job timeouts from it."""
    return f"{PREFIX}:speed:{model}"


def metrics_key(model: str) -> str:
    """Hash of cluster-wide job counters and histogram buckets for one model."""
    return f"{PREFIX}:metrics:{model}"


def webhook_delivery_key(delivery_id: str) -> str:
    """Hash of a pending `started`/`completed` webhook delivery, from its acceptance until it is
    delivered or given up: URL, job id, event, data, attempts, first-attempt and next-due times and
    the sender holding it. Its TTL (renewed by that sender) is a little longer than the retry window."""
    return f"{PREFIX}:webhook:{delivery_id}"


def webhook_due_key() -> str:
    """Sorted set of pending webhook delivery ids, scored by when any sender may take one over: its
    next attempt's due time, or the end of the lease of the live sender holding it, whichever is later."""
    return f"{PREFIX}:webhooks:due"


# Histogram buckets shared by writer (worker) and reader (API /metrics).
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
FORWARD_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def record_observation(pipe, model: str, name: str, value: float, buckets=DURATION_BUCKETS) -> None:
    """Add one observation to the Redis-held histogram `name` (e.g. 'queue_wait')."""
    key = metrics_key(model)
    for bound in buckets:
        if value <= bound:
            pipe.hincrby(key, f"{name}_bucket:{bound}", 1)
    pipe.hincrbyfloat(key, f"{name}_sum", value)
    pipe.hincrby(key, f"{name}_count", 1)


def record_duration(pipe, model: str, name: str, seconds: float) -> None:
    record_observation(pipe, model, name, seconds, DURATION_BUCKETS)


def now() -> float:
    return time.time()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def decode_record(raw: dict) -> dict[str, Any]:
    """A job hash as Python values: JSON fields parsed, numbers as numbers."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = key.decode() if isinstance(key, bytes) else key
        value = value.decode() if isinstance(value, bytes) else value
        if key in ("params", "progress", "error", "result", "last_error", "plan", "webhook"):
            out[key] = json.loads(value)
        elif key in ("created_at", "started_at", "finished_at", "updated_at"):
            out[key] = float(value)
        elif key in ("num_samples", "attempts", "failures", "max_attempts", "cancel_requested", "timeout",
                     "reserved", "max_running"):
            out[key] = int(value)
        else:
            out[key] = value
    return out
