"""`repaint worker`: load the model once, register it, then take jobs from its RQ queue.

RQ's SimpleWorker runs each job in this process (no fork per job: CUDA does not survive a
fork, and reloading the weights per job is not an option). Several workers, on one machine
or many, share a model's queue through the one Redis they point at.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from . import jobs, tasks
from .runtime import Runtime
from .settings import WorkerSettings

log = logging.getLogger("repaint.worker")


class ModelWorker(SimpleWorker):
    """A SimpleWorker that lets the running job refresh the worker's heartbeats.

    RQ refreshes a SimpleWorker's heartbeat only between jobs, so a job longer than the
    worker TTL would make a live worker look dead; the job's progress thread calls
    `keep_alive` instead.
    """

    current_execution = None

    def perform_job(self, job, queue, execution) -> bool:
        self.current_execution = execution
        try:
            return super().perform_job(job, queue, execution)
        finally:
            self.current_execution = None

    def keep_alive(self, job) -> None:
        if self.current_execution is not None:
            self.maintain_heartbeats(job, self.current_execution)


def register_model(redis: Redis, runtime: Runtime) -> None:
    redis.hset(jobs.models_key(), runtime.preset.name, jobs.dumps(runtime.describe()))


def build_worker(settings: WorkerSettings, redis: Redis) -> ModelWorker:
    name = settings.worker_name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    queue = Queue(jobs.queue_name(settings.model), connection=redis, serializer=JSONSerializer)
    return ModelWorker([queue], connection=redis, serializer=JSONSerializer, name=name)


def main(settings: WorkerSettings | None = None) -> None:
    settings = settings or WorkerSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    redis = Redis.from_url(settings.redis_url)
    runtime = Runtime(settings)  # before taking any job: a bad checkpoint stops here, loudly
    worker = build_worker(settings, redis)
    tasks.install(runtime, keep_alive=worker.keep_alive)
    register_model(redis, runtime)
    log.info("worker %s serving model %s on queue %s", worker.name, settings.model,
             jobs.queue_name(settings.model))
    worker.work(with_scheduler=False, logging_level=settings.log_level)


if __name__ == "__main__":
    main()
