"""RQ's half of each ledger transition, written into the caller's MULTI pipeline.

RQ is our queue: its lists are what workers block on and what autoscalers read, and its
registries are what `rq info` and rq-dashboard show. Our job record is the truth about a job;
these functions make RQ's picture agree with it *inside the same transaction* as the record
change, so the two never disagree after a crash. Every function only buffers writes (no reads)
and sets RQ's state absolutely (remove-then-add), so applying one twice, or after RQ's own
maintenance has touched the job, leaves the same state.

This is the one module that knows RQ's key layout beyond its public methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rq.executions import Execution, ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus as RQStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, now, utcformat

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

SERIALIZER = JSONSerializer


def queue_for(redis: "Redis", name: str) -> Queue:
    return Queue(name, connection=redis, serializer=SERIALIZER)


def new_job(queue: Queue, func: str, job_id: str, *, timeout: int, ttl: int, result_ttl: int,
            description: str) -> Job:
    """An RQ job (not yet saved) whose hash expires after `ttl` seconds while it waits."""
    return queue.create_job(func, args=[job_id], job_id=job_id, timeout=timeout, ttl=ttl,
                            result_ttl=result_ttl, failure_ttl=result_ttl, description=description)


def enqueue_fields(queue: Queue, job: Job) -> dict:
    """The fields RQ's enqueue writes to a queued job's hash (origin, enqueued_at, status, data,
    ...), for the ledger's create script, which writes them, adds the queue to RQ's set of
    queues (`queue.redis_queues_keys`) and puts the id into the queue's list (`queue.key`)."""
    queue._prepare_for_queue(job)
    return job.to_dict()


def intermediate_key(queue_name: str) -> str:
    """RQ's list of the queue's jobs that a worker dequeued and has not yet started."""
    return IntermediateQueue.get_intermediate_queue_key(Queue.redis_queue_namespace_prefix + queue_name)


def _job(redis: "Redis", queue_name: str, job_id: str) -> Job:
    job = Job(id=job_id, connection=redis, serializer=SERIALIZER)
    job.origin = queue_name
    return job


def start(pipe: "Pipeline", job: Job, token: str, worker_name: str, heartbeat_ttl: int, keep: int) -> Execution:
    """The job leaves the intermediate list for the started registry, as the RQ execution `token`.

    What `Execution.create` writes, with an id chosen by the caller, so that the transaction can
    be run again after a lost reply and recognise its own work."""
    execution = Execution(id=token, job_id=job.id, connection=job.connection, worker_name=worker_name)
    execution._job = job
    execution.save(ttl=heartbeat_ttl, pipeline=pipe)
    ExecutionRegistry(job_id=job.id, connection=pipe).add(execution=execution, ttl=heartbeat_ttl, pipeline=pipe)
    job.started_job_registry.add_execution(execution, pipeline=pipe, ttl=heartbeat_ttl, xx=False)
    pipe.sadd(execution.worker_executions_key, execution.composite_key)
    pipe.expire(execution.worker_executions_key, heartbeat_ttl + 60)
    job.prepare_for_execution(worker_name, pipe)
    pipe.expire(job.key, keep)
    pipe.lrem(queue_for(job.connection, job.origin).intermediate_queue_key, 0, job.id)
    return execution


def _leave(pipe: "Pipeline", redis: "Redis", queue_name: str, job_id: str, execution_id: str | None,
           worker_name: str | None) -> Job:
    """Out of every list and of the started registry (the execution, if there was one, ends)."""
    job = _job(redis, queue_name, job_id)
    queue = queue_for(redis, queue_name)
    pipe.lrem(queue.key, 0, job_id)
    pipe.lrem(queue.intermediate_queue_key, 0, job_id)
    if execution_id:
        Execution(id=execution_id, job_id=job_id, connection=redis, worker_name=worker_name or "").delete(job, pipe)
    return job


def _final(pipe: "Pipeline", job: Job, status: RQStatus, registry_key: str, ttl: int) -> None:
    pipe.hset(job.key, mapping={"status": status.value, "ended_at": utcformat(now())})
    pipe.zrem(FailedJobRegistry(job.origin, connection=job.connection).key, job.id)
    pipe.zadd(registry_key, {job.id: current_timestamp() + ttl})
    pipe.expire(job.key, ttl)


_FINAL_REGISTRIES = {RQStatus.FINISHED: FinishedJobRegistry, RQStatus.FAILED: FailedJobRegistry,
                     RQStatus.CANCELED: CanceledJobRegistry}


def final(pipe: "Pipeline", redis: "Redis", queue_name: str, job_id: str, execution_id: str | None,
          worker_name: str | None, ttl: int, status: RQStatus) -> None:
    """Out of every list and the started registry, into the finished, failed or canceled
    registry, the job hash expiring with the record."""
    job = _leave(pipe, redis, queue_name, job_id, execution_id, worker_name)
    _final(pipe, job, status, _FINAL_REGISTRIES[status](queue_name, connection=redis).key, ttl)


def requeued(pipe: "Pipeline", redis: "Redis", queue_name: str, job_id: str, execution_id: str | None,
             worker_name: str | None, keep: int) -> None:
    """Back at the front of its queue, whatever RQ's maintenance did to it meanwhile."""
    job = _leave(pipe, redis, queue_name, job_id, execution_id, worker_name)
    pipe.hset(job.key, "status", RQStatus.QUEUED.value)
    pipe.zrem(FailedJobRegistry(queue_name, connection=redis).key, job_id)
    pipe.zrem(StartedJobRegistry(queue_name, connection=redis).key, job_id)
    pipe.expire(job.key, keep)
    pipe.lpush(queue_for(redis, queue_name).key, job_id)


def heartbeat(pipe: "Pipeline", redis: "Redis", queue_name: str, job_id: str, execution_id: str,
              worker_name: str, ttl: int) -> None:
    """Keep RQ's execution of a running job in the started registry (writes nothing that lacks a TTL)."""
    job = _job(redis, queue_name, job_id)
    Execution(id=execution_id, job_id=job_id, connection=redis, worker_name=worker_name).heartbeat(
        job.started_job_registry, ttl, pipe)


def dropped_delivery(pipe: "Pipeline", redis: "Redis", queue_name: str, job_id: str) -> None:
    """A delivery that must not run (its job is final or owned elsewhere): out of the intermediate list."""
    pipe.lrem(queue_for(redis, queue_name).intermediate_queue_key, 0, job_id)


def prune_canceled(redis: "Redis", queue_name: str) -> int:
    """RQ never cleans its canceled registry; entries are scored by their expiry, so drop the expired."""
    return redis.zremrangebyscore(CanceledJobRegistry(queue_name, connection=redis).key, 0, current_timestamp())
