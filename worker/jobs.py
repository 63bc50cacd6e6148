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

TASK_PATH = "worker.tasks.inpaint"
PREFIX = "repaint"


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


def job_key(job_id: str) -> str:
    """Hash with the job's record: status, parameters, timestamps, progress, error."""
    return f"{PREFIX}:job:{job_id}"


def input_key(job_id: str, name: str) -> str:
    """Bytes of an upload ('image' or 'mask'), stored as normalised PNG."""
    return f"{PREFIX}:job:{job_id}:{name}"


def result_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:job:{job_id}:result:{index}"


def preview_key(job_id: str) -> str:
    """PNG of the latest x0 estimate of a running job (the model's view, sample 0)."""
    return f"{PREFIX}:job:{job_id}:preview"


def events_channel(job_id: str) -> str:
    """Pub/sub channel of a job's events: status, progress, preview."""
    return f"{PREFIX}:events:{job_id}"


def publish(pipe, job_id: str, event: str, data: dict) -> None:
    """Queue one event on `pipe` (a Redis pipeline or client)."""
    pipe.publish(events_channel(job_id), dumps({"event": event, "data": data}))


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


def speed_key(model: str) -> str:
    """Measured seconds per batched forward pass (one evaluation of every sample in flight).

    A job's wall time is its evaluations per sample times this, whatever its batch neighbours:
    the API derives job timeouts from it."""
    return f"{PREFIX}:speed:{model}"


def metrics_key(model: str) -> str:
    """Hash of cluster-wide job counters and histogram buckets for one model."""
    return f"{PREFIX}:metrics:{model}"


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
        elif key in ("num_samples", "attempts", "failures", "max_attempts", "cancel_requested", "timeout"):
            out[key] = int(value)
        else:
            out[key] = value
    return out
