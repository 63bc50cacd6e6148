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
import time
import uuid

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
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
    heartbeat_ttl: int = 30

    def execute_job(self, job, queue) -> None:
        self.engine.run(job, queue)
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        # Short, refreshed every few seconds by the engine's thread: a dead worker's jobs are
        # found within about this many seconds, not at the job timeout.
        return self.heartbeat_ttl


def register_model(redis: Redis, runtime: Runtime) -> None:
    redis.hset(jobs.models_key(), runtime.preset.name, jobs.dumps(runtime.describe()))


def build_worker(settings: WorkerSettings, redis: Redis, runtime: Runtime) -> BatchWorker:
    name = settings.worker_name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    queue = Queue(jobs.queue_name(settings.model), connection=redis, serializer=JSONSerializer)
    worker = BatchWorker([queue], connection=redis, serializer=JSONSerializer, name=name,
                         worker_ttl=settings.heartbeat_ttl)
    worker.heartbeat_ttl = settings.heartbeat_ttl
    worker.engine = BatchEngine(worker, runtime, max_batch=runtime.max_batch,
                                progress_interval=settings.progress_interval,
                                heartbeat_interval=max(1.0, settings.heartbeat_ttl / 6),
                                shutdown_grace=settings.shutdown_grace)
    return worker


def main(settings: WorkerSettings | None = None) -> None:
    settings = settings or WorkerSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    redis = Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5,
                           health_check_interval=15)
    runtime = Runtime(settings)  # before taking any job: a bad checkpoint stops here, loudly
    delay = 1.0
    while True:
        try:
            worker = build_worker(settings, redis, runtime)
            register_model(redis, runtime)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.error("redis unavailable (%s); retrying in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
            continue
        delay = 1.0
        log.info("worker %s serving model %s on queue %s", worker.name, settings.model,
                 jobs.queue_name(settings.model))
        worker.engine.start()
        try:
            worker.work(with_scheduler=False, logging_level=settings.log_level)
        finally:
            worker.engine.stop()
        if worker._shutdown_requested_date is not None:
            break  # SIGTERM/SIGINT: a requested stop
        # RQ's loop gave up (typically Redis went away outside a dequeue): start a fresh worker.
        log.warning("worker loop ended without a stop request; restarting it")
        time.sleep(1.0)


if __name__ == "__main__":
    main()
