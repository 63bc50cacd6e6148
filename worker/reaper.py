"""Recovering jobs whose worker died: at-least-once execution on RQ's own retry mechanism.

A worker that is SIGKILLed (or loses its machine) stops refreshing its jobs' heartbeats in
RQ's StartedJobRegistry. RQ finds such abandoned jobs only in its periodic maintenance (every
ten minutes by default); every worker here runs `reap` every few seconds instead. RQ then
re-enqueues the job while it has retries left (jobs are enqueued with `max_attempts - 1`
retries) or moves it to the FailedJobRegistry, and our job record follows: back to `queued`
(the attempt counter shows the history) or `failed` with the reason.
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from rq.job import Job, JobStatus as RQStatus
from rq.registry import StartedJobRegistry

from . import jobs
from .jobs import JobStatus

log = logging.getLogger(__name__)


def reap(redis: Redis, queues, *, lock_seconds: int = 4) -> list[str]:
    """Hand abandoned jobs of `queues` back to RQ; returns the ids handled (one worker at a time)."""
    handled: list[str] = []
    for queue in queues:
        # Several workers run this; one pass per queue and interval is enough.
        if not redis.set(f"{jobs.PREFIX}:reaper:{queue.name}", 1, nx=True, ex=lock_seconds):
            continue
        registry = StartedJobRegistry(queue=queue)
        expired = registry.get_expired_job_ids(time.time())
        if not expired:
            continue
        registry.cleanup()  # RQ: retry if retries are left, else FailedJobRegistry
        for job_id in expired:
            try:
                job = Job.fetch(job_id, connection=redis, serializer=queue.serializer)
            except Exception:
                continue
            sync_record(redis, job)
            handled.append(job_id)
            log.warning("job %s was abandoned by a dead worker; now %s", job_id, job.get_status())
    return handled


def sync_record(redis: Redis, job: Job) -> None:
    """Make our job record say what RQ decided for an abandoned job."""
    key = jobs.job_key(job.id)
    record = jobs.decode_record(redis.hgetall(key))
    if not record or JobStatus(record["status"]).final:
        return
    status = job.get_status()
    if status in (RQStatus.QUEUED, RQStatus.SCHEDULED, RQStatus.DEFERRED):
        error = {"type": "worker_lost", "message": "the worker running this job stopped; it was queued again"}
        redis.hset(key, mapping={"status": JobStatus.QUEUED.value, "last_error": jobs.dumps(error)})
        redis.hdel(key, "progress", "started_at")
        jobs.publish(redis, job.id, "status", {"status": JobStatus.QUEUED.value, "last_error": error})
    elif status == RQStatus.FAILED:
        attempts = record.get("attempts", 0)
        jobs.finish_record(redis, job.id, record["model"], JobStatus.FAILED, error={
            "type": "worker_lost",
            "message": f"the worker running this job stopped responding; gave up after {attempts} attempt(s)"})
