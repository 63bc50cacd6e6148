"""Reading and writing job records in Redis for the API (the worker writes the rest)."""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import datetime, timezone

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
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


def create_job(redis: Redis, settings: ApiSettings, *, model: str, params: dict, image_png: bytes,
               mask_png: bytes, evaluations: int) -> str:
    job_id = str(uuid.uuid4())
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
        if rq_status in (RQStatus.FAILED, RQStatus.STOPPED):
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
