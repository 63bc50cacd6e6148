"""Reading and writing job records in Redis for the API (the worker writes the rest)."""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import datetime, timezone

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus as RQStatus
from rq.serializers import JSONSerializer

from worker import jobs
from worker.jobs import JobStatus

from .settings import ApiSettings


def queue_for(redis: Redis, model: str) -> Queue:
    return Queue(jobs.queue_name(model), connection=redis, serializer=JSONSerializer)


def job_timeout(redis: Redis, settings: ApiSettings, model: str, evaluations: int) -> int:
    """RQ's 180 s default is far too short: scale with the job's evaluations and measured speed."""
    if settings.job_timeout is not None:
        return settings.job_timeout
    measured = redis.get(jobs.speed_key(model))
    per = float(measured) if measured is not None else settings.seconds_per_evaluation
    return max(settings.min_job_timeout, math.ceil(3 * per * evaluations + 60))


def new_job_id() -> str:
    return str(uuid.uuid4())


def idempotency_key(key: str) -> str:
    return f"{jobs.PREFIX}:idempotency:{key}"


def idempotent_job(redis: Redis, key: str, fingerprint: str) -> str | None:
    """The job an earlier request with this key created; 409 if that request sent other data."""
    from fastapi import HTTPException

    raw = redis.get(idempotency_key(key))
    if raw is None:
        return None
    stored = json.loads(raw)
    if stored["fingerprint"] != fingerprint:
        raise HTTPException(409, "this Idempotency-Key was used for a different upload or parameters")
    return stored["job_id"]


def claim_idempotency_key(redis: Redis, key: str, fingerprint: str, job_id: str, ttl: int) -> str:
    """Atomically bind `key` to `job_id`; returns the job the key is bound to (maybe another)."""
    value = jobs.dumps({"job_id": job_id, "fingerprint": fingerprint})
    if redis.set(idempotency_key(key), value, nx=True, ex=ttl):
        return job_id
    existing = idempotent_job(redis, key, fingerprint)
    return existing or job_id


def create_job(redis: Redis, settings: ApiSettings, *, job_id: str, model: str, params: dict, image_png: bytes,
               mask_png: bytes, evaluations: int) -> str:
    created = time.time()
    ttl = settings.input_ttl
    timeout = job_timeout(redis, settings, model, evaluations)
    with redis.pipeline() as pipe:
        pipe.set(jobs.input_key(job_id, "image"), image_png, ex=ttl)
        pipe.set(jobs.input_key(job_id, "mask"), mask_png, ex=ttl)
        pipe.hset(jobs.job_key(job_id), mapping={
            "status": JobStatus.QUEUED.value, "model": model, "params": jobs.dumps(params),
            "created_at": created, "num_samples": params["num_samples"], "attempts": 0,
            "timeout": timeout})
        # Unfinished records outlive their inputs a little; finished ones get result_ttl.
        pipe.expire(jobs.job_key(job_id), ttl + timeout + 3600)
        pipe.execute()
    queue_for(redis, model).enqueue_call(
        jobs.TASK_PATH, args=[job_id], job_id=job_id, timeout=timeout,
        result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
        # Retries cover lost workers (at-least-once); bad input and timeouts fail at once.
        retry=Retry(max=settings.max_attempts - 1) if settings.max_attempts > 1 else None,
        description=f"inpaint {model} {job_id}")
    return job_id


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def read_job(redis: Redis, job_id: str) -> dict | None:
    """The job's record, reconciled with RQ when RQ knows more (e.g. a timeout)."""
    try:
        uuid.UUID(job_id)
    except ValueError:
        return None
    record = jobs.decode_record(redis.hgetall(jobs.job_key(job_id)))
    if not record:
        return None
    status = JobStatus(record["status"])
    if status == JobStatus.QUEUED:
        record["position"] = queue_for(redis, record["model"]).get_job_position(job_id)
    if not status.final:
        try:
            rq_job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
            rq_status = rq_job.get_status()
        except NoSuchJobError:
            rq_job, rq_status = None, None
        if status == JobStatus.RUNNING and rq_status in (RQStatus.QUEUED, RQStatus.SCHEDULED):
            record["status"] = JobStatus.QUEUED.value  # handed back by a lost or stopping worker
        elif rq_status in (RQStatus.FAILED, RQStatus.STOPPED):
            # The worker died or RQ gave up before our task could record the failure.
            reason = (rq_job.exc_info or "").strip().splitlines()[-1:] if rq_job else []
            record["status"] = JobStatus.FAILED.value
            record["error"] = {"type": "worker_failure",
                               "message": reason[0] if reason else "the worker stopped running this job"}
    return record


def result_bytes(redis: Redis, job_id: str, index: int) -> bytes | None:
    return redis.get(jobs.result_key(job_id, index))


def registered_models(redis: Redis) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in redis.hgetall(jobs.models_key()).items()}


def cancel_job(redis: Redis, job_id: str, ttl: int) -> dict:
    """Cancel a job: a queued one never runs; a running one stops at its worker's next step.

    Returns the record as it is after the request. Final jobs are left as they are.
    """
    key = jobs.job_key(job_id)
    record = read_job(redis, job_id)
    status = JobStatus(record["status"])
    if status.final:
        return record
    # The flag is what a worker checks, both when it admits a job and between steps.
    redis.hset(key, "cancel_requested", 1)
    if status == JobStatus.QUEUED:
        try:
            rq_job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
            if rq_job.get_status() == RQStatus.QUEUED:
                rq_job.cancel()
                jobs.finish_record(redis, job_id, record["model"], JobStatus.CANCELED, ttl)
        except (NoSuchJobError, InvalidJobOperation):  # taken by a worker meanwhile: it sees the flag
            pass
    return read_job(redis, job_id)
