"""`repaint worker`: load the model once, register it, then serve its RQ queue in batches.

The worker is an RQ SimpleWorker (jobs run in this process: no fork per job, since CUDA does
not survive a fork and the weights load once) whose `execute_job` hands each dequeued job to
the batching engine, which admits further queued jobs between forward passes. Several workers,
on one machine or many, share a model's queue through the one Redis they point at.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from . import jobs
from .engine import BatchEngine
from .runtime import Runtime
from .settings import WorkerSettings

log = logging.getLogger("repaint.worker")


class BatchWorker(SimpleWorker):
    """A SimpleWorker whose jobs run through a continuous-batching engine."""

    engine: BatchEngine

    def execute_job(self, job, queue) -> None:
        self.engine.run(job, queue)
        self.set_state(WorkerStatus.IDLE)


def register_model(redis: Redis, runtime: Runtime) -> None:
    redis.hset(jobs.models_key(), runtime.preset.name, jobs.dumps(runtime.describe()))


def build_worker(settings: WorkerSettings, redis: Redis, runtime: Runtime) -> BatchWorker:
    name = settings.worker_name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    queue = Queue(jobs.queue_name(settings.model), connection=redis, serializer=JSONSerializer)
    worker = BatchWorker([queue], connection=redis, serializer=JSONSerializer, name=name)
    worker.engine = BatchEngine(worker, runtime, max_batch=runtime.max_batch,
                                progress_interval=settings.progress_interval)
    return worker


def main(settings: WorkerSettings | None = None) -> None:
    settings = settings or WorkerSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    redis = Redis.from_url(settings.redis_url)
    runtime = Runtime(settings)  # before taking any job: a bad checkpoint stops here, loudly
    worker = build_worker(settings, redis, runtime)
    register_model(redis, runtime)
    log.info("worker %s serving model %s on queue %s", worker.name, settings.model,
             jobs.queue_name(settings.model))
    worker.work(with_scheduler=False, logging_level=settings.log_level)


if __name__ == "__main__":
    main()
