"""`repaint worker`: load the model once, register it, then serve its RQ queue in batches.

The worker is an RQ SimpleWorker (jobs run in this process: no fork per job, since CUDA does
not survive a fork and the weights load once) whose `execute_job` hands each dequeued job to
the batching engine, which admits further queued jobs between forward passes. Several workers,
on one machine or many, share a model's queue through the one Redis they point at.

This module and worker.rqside are the RQ adapter: the hooks RQ calls, and RQ's bookkeeping.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from typing import Callable

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker
from rq.worker import WorkerStatus

from models.checkpoints import CheckpointError
from models.config import ConfigError
from models.registry import parse_model_ref

from . import jobs, redis_url, rqside, startup
from .acks import AckUnsupported
from .allocator import reuse_tensor_blocks
from .engine import BatchEngine
from .ledger import Ledger, Outcome
from .liveness import DEFUNCT_EXIT_CODE, Heartbeats, register_model
from .runtime import Runtime
from .settings import WorkerSettings
from .webhooks import RetryPolicy, WebhookSender
from .webhooks_policy import WebhookPolicy

log = logging.getLogger("repaint.worker")

CONFIG_EXIT_CODE = 78  # EX_CONFIG: the model, its folder or its weights must be fixed first


class BatchWorker(SimpleWorker):
    """A SimpleWorker whose jobs run through a continuous-batching engine."""

    engine: BatchEngine
    ledger: Ledger
    heartbeat_ttl: int = 30

    def execute_job(self, job, queue) -> None:
        # BUSY: RQ then takes SIGTERM as "finish first" (warm shutdown), and idle peers are told apart.
        self.set_state(WorkerStatus.BUSY)
        try:
            self.engine.run(job, queue)
        finally:
            self.set_state(WorkerStatus.IDLE)

    def subscribe(self) -> None:
        """RQ's own listener for its commands (`rq suspend`, shutdown, ...), polling every second
        rather than every 60 s: at teardown redis-py (8.2) joins that thread, and one that saw the
        UNSUBSCRIBE before the stop waits out a whole poll, so a SIGTERMed worker took up to a
        minute to exit (one stop in four or five; tests/worker/test_worker_stop.py)."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=1, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        # Short, refreshed every few seconds by the heartbeat thread: a dead worker's jobs are
        # found within about twice this many seconds, not at the job timeout.
        return self.heartbeat_ttl

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        """RQ calls this for a job it found stuck between the queue and a worker (a worker died
        right after dequeueing it): the ledger puts it back if it is still waiting."""
        outcome = self.ledger.recover_undelivered(queue.name, job.id)
        log.warning("job %s was stuck after dequeue (%s): %s", job.id, exc_string, outcome.value)
        if outcome == Outcome.MISSING:
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)


def build_webhooks(settings: WorkerSettings, redis: Redis, ledger: Ledger) -> WebhookSender:
    """One sender for the process's life (the RQ worker may be rebuilt after a Redis outage). It
    keeps pending `started`/`completed` deliveries in Redis, and takes over those of a worker that
    died (this one before a restart included) once they are due."""
    policy = WebhookPolicy.from_settings(settings.webhook_allowed_hosts, settings.webhook_secret)
    if policy.entries and not policy.enabled:
        log.error("webhooks are OFF: %s; jobs' webhooks will not be called", policy.disabled_reason)
    retry = RetryPolicy(max_attempts=settings.webhook_max_attempts, window=settings.webhook_retry_window)
    return WebhookSender(policy, ledger.webhook_delivered, redis=redis, retry=retry, timeout=settings.webhook_timeout)


def build_worker(settings: WorkerSettings, redis: Redis, runtime: Runtime, webhooks: WebhookSender) -> BatchWorker:
    name = settings.worker_name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    queue = rqside.queue_for(redis, jobs.queue_name(runtime.preset.name))
    worker = BatchWorker([queue], connection=redis, serializer=rqside.SERIALIZER, name=name,
                         worker_ttl=settings.heartbeat_ttl)
    worker.heartbeat_ttl = settings.heartbeat_ttl
    worker.ledger = Ledger(redis, result_ttl=settings.result_ttl, ack=settings.acknowledgement())
    worker.engine = BatchEngine(worker, runtime, worker.ledger, settings, max_batch=runtime.max_batch,
                                webhooks=webhooks)
    return worker


def main(settings: WorkerSettings | None = None, *,
         make_runtime: Callable[[WorkerSettings], Runtime] | None = None) -> None:
    """Serve until stopped. `make_runtime` builds the resident model from the settings (default:
    Runtime; or a subclass that overrides one of its hooks, as rq's workers are extended)."""
    settings = settings or WorkerSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    reuse_tensor_blocks()  # before the first tensor: passes reuse their blocks (worker.allocator)
    redis = redis_url.connect(settings.redis_url, socket_timeout=30, socket_connect_timeout=5,
                           health_check_interval=15)
    model_name = parse_model_ref(settings.model).name
    where = settings.worker_name or socket.gethostname()
    try:
        # Before taking any job: a bad checkpoint or folder stops here, loudly.
        runtime = (make_runtime or Runtime)(settings)
    except (ConfigError, CheckpointError) as exc:
        # A configuration to fix, not a crash to restart: one clear message, on record for the API
        # and the page too (worker.startup), and exit 78 (EX_CONFIG).
        log.error("cannot serve model %r: %s", settings.model, exc)
        startup.record(redis, model_name, where, "load", str(exc))
        sys.exit(CONFIG_EXIT_CODE)
    try:
        runtime.self_test()  # and so does a device that cannot run it
    except Exception as exc:
        log.exception("the model's self-test forward pass failed: this worker takes no job")
        startup.record(redis, model_name, where, "self-test", f"{type(exc).__name__}: {exc}")
        sys.exit(DEFUNCT_EXIT_CODE)
    describe = runtime.describe()
    webhooks = build_webhooks(settings, redis, Ledger(redis, result_ttl=settings.result_ttl))
    delay = 1.0
    while True:
        try:
            worker = build_worker(settings, redis, runtime, webhooks)
            try:
                log.info("%s", worker.ledger.check_ack())
            except AckUnsupported as exc:
                log.error("cannot serve: %s", exc)
                sys.exit(CONFIG_EXIT_CODE)
            register_model(redis, describe)
            redis.delete(jobs.defunct_key(worker.name))
            startup.clear(redis, runtime.preset.name, where)  # serving now: an earlier failure here is over
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.error("redis unavailable (%s); retrying in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
            continue
        delay = 1.0
        log.info("worker %s serving model %s on queue %s", worker.name, runtime.preset.name,
                 jobs.queue_name(runtime.preset.name))
        heartbeats = Heartbeats(worker, worker.engine, worker.ledger, ttl=settings.heartbeat_ttl, describe=describe,
                                report=lambda: {jobs.WORKER_COMPILE_FIELD: runtime.compile_state})
        heartbeats.start()
        try:
            worker.work(with_scheduler=False, logging_level=settings.log_level)
        finally:
            heartbeats.stop()
            worker.engine.reporter.stop()  # a rebuilt worker gets its own
        if worker.engine.defunct:
            log.error("worker %s exits defunct: %s", worker.name, worker.engine.defunct)
            webhooks.close(timeout=5)
            sys.exit(DEFUNCT_EXIT_CODE)
        if worker._shutdown_requested_date is not None:
            if not webhooks.close(timeout=5):  # the final events of the jobs it just finished
                log.warning("worker stopping with webhook deliveries still pending")
            break  # SIGTERM/SIGINT: a requested stop
        # RQ's loop gave up (typically Redis went away outside a dequeue): start a fresh worker.
        log.warning("worker loop ended without a stop request; restarting it")
        time.sleep(1.0)


if __name__ == "__main__":
    main()
