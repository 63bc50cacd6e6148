"""Continuous batching: many jobs share every forward pass of the resident model.

RQ hands a worker one job at a time and has no batch dequeue, so this loop is ours, built on
RQ's public pieces: each admitted job gets its own RQ execution (StartedJobRegistry, status
`started`) and leaves through RQ's success or failure handling, so `rq info` and rq-dashboard
show reality. Each tick runs one forward pass over every sample in flight, each at its own
timestep in its own schedule; a finished job leaves at once and queued jobs join at the next
tick.

Nothing is lost: bad data fails only its job; a canceled job leaves before the next step; on
SIGTERM the engine stops admitting, finishes what it holds within the grace period and puts
the rest back at the front of the queue; out of memory halves the batch and re-queues the
newest jobs; a Redis outage pauses the loop (the batch stays in memory) until Redis is back.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.exceptions
import torch
from rq.utils import now as rq_now

import models

from . import jobs, reaper
from .webhooks import WebhookSender
from .jobs import JobStatus
from .runtime import JobInputError, JobParams, PreparedJob, Runtime

if TYPE_CHECKING:
    from rq import Queue
    from rq.executions import Execution
    from rq.job import Job

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Failures that another attempt cannot fix: the job fails at once, whatever retries are left.
FINAL_FAILURES = ("invalid_input", "timeout")


@dataclass
class InFlight:
    """One admitted job: its RQ objects, its samples in the batch and its bookkeeping."""

    job: "Job"
    queue: "Queue"
    execution: "Execution"
    model: str
    params: JobParams
    prepared: PreparedJob         # the upload, its mask and the model's view of it
    samples: list = field(default_factory=list)
    started: float = field(default_factory=time.time)
    timeout: float | None = None
    webhook: dict | None = None

    @property
    def step(self) -> int:
        return min(s.evaluations for s in self.samples)

    @property
    def total(self) -> int:
        return self.samples[0].total_evaluations

    @property
    def done(self) -> bool:
        return all(s.done for s in self.samples)


class StepStats:
    """Batch sizes and forward-pass times, flushed to the Redis metrics hash periodically."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, float]] = []

    def record(self, batch_size: int, seconds: float) -> None:
        self.pending.append((batch_size, seconds))

    def flush(self, pipe, model: str) -> None:
        for size, seconds in self.pending:
            jobs.record_observation(pipe, model, "batch_size", size, jobs.BATCH_SIZE_BUCKETS)
            jobs.record_observation(pipe, model, "forward_seconds", seconds, jobs.FORWARD_SECONDS_BUCKETS)
        self.pending.clear()


class BatchEngine:
    """The batching loop of one worker. `run(job, queue)` returns when nothing is left in flight."""

    def __init__(self, worker, runtime: Runtime, *, max_batch: int, progress_interval: float,
                 heartbeat_interval: float = 5.0, shutdown_grace: float = 50.0):
        self.worker = worker
        self.runtime = runtime
        self.redis = worker.connection
        self.max_batch = max_batch
        self.progress_interval = progress_interval
        self.heartbeat_interval = heartbeat_interval
        self.shutdown_grace = shutdown_grace
        self.batch = models.RePaintBatch(runtime.loaded.diffusion, device=runtime.device)
        self.in_flight: list[InFlight] = []
        self.stats = StepStats()
        self._last_progress = 0.0
        self._peers_checked = 0.0
        self._idle_peer = False
        self._stop_seen: float | None = None
        self._last_preview = 0.0
        self.preview_interval = runtime.settings.preview_interval
        settings = runtime.settings
        self.webhooks = WebhookSender(settings.webhook_secret,
                                      [h.strip() for h in settings.webhook_allowed_hosts.split(",") if h.strip()])
        self._keepalive = threading.Thread(target=self._keep_alive_loop, name="heartbeats", daemon=True)
        self._keepalive_stop = threading.Event()

    # ---- heartbeats and dead-worker recovery, on a thread ---------------------------------------

    def start(self) -> None:
        self._keepalive.start()

    def stop(self) -> None:
        self._keepalive_stop.set()

    def _keep_alive_loop(self) -> None:
        """RQ refreshes heartbeats only between jobs; this thread refreshes them during long
        batches too (even while one step takes longer than the TTL) and reaps dead workers' jobs."""
        while not self._keepalive_stop.wait(self.heartbeat_interval):
            try:
                for flight in list(self.in_flight):
                    self.worker.maintain_heartbeats(flight.job, flight.execution)
                self.worker.heartbeat()
                reaper.reap(self.redis, self.worker.queues)
            except REDIS_ERRORS as exc:
                log.warning("heartbeat: redis unavailable (%s)", exc)
            except Exception:
                log.exception("heartbeat thread error")

    # ---- admission -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self.batch)

    def _next_job_size(self) -> int | None:
        """num_samples of the job at the head of the queue, without taking it (None: empty)."""
        for queue in self.worker.queues:
            ids = queue.get_job_ids(0, 1)
            if ids:
                raw = self.redis.hget(jobs.job_key(ids[0]), "num_samples")
                return int(raw) if raw is not None else 1
        return None

    def _an_idle_peer_exists(self) -> bool:
        """Whether another worker of these queues is idle (checked at most once a second).

        Fairness: an idle peer is blocked on the queue and takes the next job at once, so a
        busy worker leaves waiting jobs to it rather than packing them into its own batch.
        """
        from rq import Worker

        now_ = time.time()
        if now_ - self._peers_checked >= 1.0:
            self._peers_checked = now_
            keys = {k for q in self.worker.queues for k in Worker.all_keys(connection=self.redis, queue=q)}
            keys.discard(self.worker.key)
            with self.redis.pipeline() as pipe:
                for key in keys:
                    pipe.hget(key, "state")
                states = pipe.execute()
            self._idle_peer = any(s is not None and s.decode() == "idle" for s in states)
        return self._idle_peer

    def admit_waiting(self) -> None:
        """Take queued jobs while their samples fit (a job larger than max_batch runs alone)."""
        from rq import Queue

        while not self.worker._stop_requested and not (len(self.batch) and self._an_idle_peer_exists()):
            if len(self.batch) and self.free_slots <= 0:
                return  # full: no Redis round trip on this tick
            size = self._next_job_size()
            if size is None or (size > self.free_slots and len(self.batch) > 0):
                return
            got = Queue.dequeue_any(self.worker.queues, None, connection=self.redis,
                                    job_class=self.worker.job_class, serializer=self.worker.serializer)
            if got is None:
                return
            self.admit(*got)

    def admit(self, job: "Job", queue: "Queue") -> None:
        """Start an RQ execution for `job` and put its samples into the batch."""
        execution = self.worker.prepare_execution(job)
        self.worker.prepare_job_execution(job, remove_from_intermediate_queue=len(self.worker.queues) == 1)
        job.started_at = rq_now()
        key = jobs.job_key(job.id)
        started = time.time()
        record = {}
        try:
            record = jobs.decode_record(self.redis.hgetall(key))
            if not record:
                raise JobInputError(f"job {job.id} has no record (expired before a worker took it)")
            if record.get("cancel_requested") or record["status"] == JobStatus.CANCELED.value:
                self._cancel_rq(job, execution, record["model"], record["status"] != JobStatus.CANCELED.value)
                return
            with self.redis.pipeline() as pipe:
                pipe.hset(key, mapping={"status": JobStatus.RUNNING.value, "started_at": started,
                                        "worker": self.worker.name})
                pipe.hincrby(key, "attempts", 1)
                jobs.record_duration(pipe, record["model"], "queue_wait", started - record["created_at"])
                jobs.publish(pipe, job.id, "status", {"status": JobStatus.RUNNING.value,
                                                      "attempts": record.get("attempts", 0) + 1})
                pipe.execute()
            params = JobParams.from_dict(record["params"])
            image_png = self.redis.get(jobs.input_key(job.id, "image"))
            mask_png = self.redis.get(jobs.input_key(job.id, "mask"))
            if image_png is None or mask_png is None:
                raise JobInputError("the job's uploaded image expired before a worker took it")
            prepared = self.runtime.prepare(image_png, mask_png, params)
            self.redis.hset(key, "plan", jobs.dumps(prepared.plan.describe()))
            flight = InFlight(job=job, queue=queue, execution=execution, model=record["model"], params=params,
                              prepared=prepared, started=started, webhook=record["params"].get("webhook"),
                              timeout=job.timeout if job.timeout and job.timeout > 0 else None)
            flight.samples = self.runtime.add_samples(self.batch, prepared, params)
        except REDIS_ERRORS:
            raise
        except Exception:
            # Bad data fails this job alone; the batch and the worker carry on.
            self._fail(job, queue, execution, record.get("model"), sys.exc_info())
            return
        self.in_flight.append(flight)
        self.webhooks.notify(flight.webhook, job.id, "started", {"status": JobStatus.RUNNING.value})
        self._write_progress(force=True)

    # ---- the loop --------------------------------------------------------------------------

    def run(self, job: "Job", queue: "Queue") -> None:
        try:
            self._run(job, queue)
        except BaseException:
            # Cold shutdown (a second SIGTERM) or an unexpected error: nothing in flight is lost.
            if self.in_flight:
                log.warning("engine stopping with %d job(s) in flight: putting them back", len(self.in_flight))
                self._requeue_all("the worker stopped before finishing this job")
            raise

    def _run(self, job: "Job", queue: "Queue") -> None:
        self._until_redis(lambda: self.admit(job, queue))
        while self.in_flight:
            try:
                self.admit_waiting()
                self.tick()
                self.retire()
                self.check_cancellations()
                self._write_progress()
                self._check_shutdown()
            except REDIS_ERRORS as exc:
                log.error("redis unavailable (%s): batch of %d job(s) paused", exc, len(self.in_flight))
                self._wait_for_redis()
        self._until_redis(self._flush_stats)

    def tick(self) -> None:
        """One network evaluation for every sample in flight."""
        if not len(self.batch) or all(s.done for s in self.batch.states):
            return
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                ran = self.runtime.step(self.batch)
        except Exception as exc:
            if self.runtime.is_out_of_memory(exc):
                self._shrink_after_oom(exc)
                return
            # A failure inside the shared forward pass cannot be pinned on one job's data.
            exc_info = sys.exc_info()
            log.error("batch step failed: %s", traceback.format_exc())
            for flight in list(self.in_flight):
                self._leave(flight)
                self._fail(flight.job, flight.queue, flight.execution, flight.model, exc_info)
            return
        if ran:
            self.stats.record(ran, time.perf_counter() - t0)

    def _shrink_after_oom(self, exc: BaseException) -> None:
        """Out of memory: halve max_batch and put the newest jobs back in the queue."""
        self.runtime.release_memory()
        old = self.max_batch
        self.max_batch = max(1, min(self.max_batch, len(self.batch)) // 2)
        log.warning("out of memory with %d samples in flight (%s); max_batch %d -> %d",
                    len(self.batch), exc, old, self.max_batch)
        while len(self.in_flight) > 1 and len(self.batch) > self.max_batch:
            self._requeue(self.in_flight[-1], "out of memory in a batch; queued again for a smaller batch")
        if len(self.batch) > self.max_batch and self.max_batch == 1 and len(self.in_flight) == 1:
            # One job alone does not fit: it cannot succeed on this worker.
            flight = self.in_flight[0]
            self._leave(flight)
            try:
                raise exc
            except BaseException:
                self._fail(flight.job, flight.queue, flight.execution, flight.model, sys.exc_info())

    def retire(self) -> None:
        """Finished jobs leave at once; jobs past their timeout fail and leave."""
        now_ = time.time()
        for flight in list(self.in_flight):
            if flight.done:
                self._succeed(flight)
            elif flight.timeout is not None and now_ - flight.started > flight.timeout:
                self._leave(flight)
                try:
                    raise TimeoutError(f"job exceeded its timeout of {flight.timeout:.0f}s")
                except TimeoutError:
                    self._fail(flight.job, flight.queue, flight.execution, flight.model, sys.exc_info())

    def check_cancellations(self) -> None:
        """A DELETE sets a flag on the job's record; a canceled job leaves before the next step."""
        if not self.in_flight:
            return
        with self.redis.pipeline() as pipe:
            for flight in self.in_flight:
                pipe.hget(jobs.job_key(flight.job.id), "cancel_requested")
            flags = pipe.execute()
        for flight, flag in zip(list(self.in_flight), flags):
            if flag is not None:
                self._leave(flight)
                self._cancel_rq(flight.job, flight.execution, flight.model, count=True)
                log.info("job %s canceled after %d of %d steps", flight.job.id, flight.step, flight.total)

    def _check_shutdown(self) -> None:
        """Warm shutdown (SIGTERM): admit nothing more; after the grace period re-queue the rest."""
        if not self.worker._stop_requested:
            return
        if self._stop_seen is None:
            self._stop_seen = time.time()
            log.info("shutdown requested: finishing %d job(s) within %.0fs", len(self.in_flight), self.shutdown_grace)
        if time.time() - self._stop_seen > self.shutdown_grace:
            self._requeue_all("the worker shut down before finishing this job")

    # ---- leaving the batch ---------------------------------------------------------------------

    def _leave(self, flight: InFlight) -> None:
        self.batch.remove(flight.samples)
        self.in_flight.remove(flight)

    def _succeed(self, flight: InFlight) -> None:
        # Store first, leave last: if Redis fails half-way, the finished job stays in flight
        # and this runs again once Redis is back.
        with torch.inference_mode():
            out = self.batch.result(flight.samples)
        pngs = self.runtime.encode(out, flight.prepared, flight.params)
        job_id = flight.job.id
        ttl = self.runtime.settings.result_ttl
        evaluations = flight.total * len(flight.samples)
        progress = {"step": flight.total, "total": flight.total, "fraction": 1.0, "eta_seconds": 0.0,
                    "updated_at": time.time()}
        with self.redis.pipeline() as pipe:
            for i, png in enumerate(pngs):
                pipe.set(jobs.result_key(job_id, i), png, ex=ttl)
            pipe.hincrby(jobs.metrics_key(flight.model), "model_evaluations_total", evaluations)
            speed = self.runtime.seconds_per_evaluation
            if speed is not None:
                pipe.set(jobs.speed_key(flight.model), speed)
            jobs.publish(pipe, job_id, "progress", progress)
            pipe.execute()
        jobs.finish_record(self.redis, job_id, flight.model, JobStatus.SUCCEEDED, ttl,
                      progress=progress, result={"count": len(pngs)})
        self.webhooks.notify(flight.webhook, job_id, "completed", {
            "status": JobStatus.SUCCEEDED.value,
            "results": [f"/jobs/{job_id}/result?index={i}" for i in range(len(pngs))]})
        self._leave(flight)
        self.worker._finalize_success(flight.job, flight.queue, flight.execution,
                                      {"results": len(pngs), "evaluations": evaluations})

    def _fail(self, job, queue, execution, model: str | None, exc_info) -> None:
        exc = exc_info[1]
        if isinstance(exc, JobInputError):
            kind = "invalid_input"
        elif self.runtime.is_out_of_memory(exc):
            kind = "out_of_memory"
        elif isinstance(exc, TimeoutError):
            kind = "timeout"
        else:
            kind = type(exc).__name__
        error = {"type": kind, "message": str(exc) or type(exc).__name__}
        if kind in FINAL_FAILURES:
            job.retries_left = 0
        will_retry = bool(job.retries_left) and job.retries_left > 0
        log.warning("job %s failed (%s): %s%s", job.id, kind, exc, "; RQ will retry it" if will_retry else "")
        if model is not None:
            if will_retry:
                # Final states are final: a job RQ will run again is queued, not failed.
                with self.redis.pipeline() as pipe:
                    pipe.hset(jobs.job_key(job.id), mapping={"status": JobStatus.QUEUED.value,
                                                             "last_error": jobs.dumps(error)})
                    jobs.publish(pipe, job.id, "status", {"status": JobStatus.QUEUED.value, "last_error": error})
                    pipe.execute()
            else:
                jobs.finish_record(self.redis, job.id, model, JobStatus.FAILED, self.runtime.settings.result_ttl,
                              error=error)
                hook = next((f.webhook for f in self.in_flight if f.job.id == job.id), None)
                if hook is None:
                    hook = _record_webhook(self.redis, job.id)
                self.webhooks.notify(hook, job.id, "completed", {"status": JobStatus.FAILED.value, "error": error})
        self.worker._finalize_failure(job, queue, execution, exc_info)

    def _requeue(self, flight: InFlight, reason: str) -> None:
        """Put a job back at the front of its queue (no attempt used up); it restarts from scratch."""
        from rq.executions import cleanup_execution

        self._leave(flight)
        with self.redis.pipeline() as pipe:
            cleanup_execution(self.worker, flight.job, pipe, flight.execution)
            pipe.hset(jobs.job_key(flight.job.id), mapping={
                "status": JobStatus.QUEUED.value, "last_error": jobs.dumps({"type": "requeued", "message": reason})})
            pipe.hdel(jobs.job_key(flight.job.id), "progress", "started_at")
            jobs.publish(pipe, flight.job.id, "status", {"status": JobStatus.QUEUED.value,
                                                         "last_error": {"type": "requeued", "message": reason}})
            pipe.execute()
        flight.queue.enqueue_job(flight.job, at_front=True)
        log.info("job %s re-queued: %s", flight.job.id, reason)

    def _requeue_all(self, reason: str) -> None:
        for flight in list(self.in_flight):
            try:
                self._requeue(flight, reason)
            except REDIS_ERRORS:
                log.error("could not re-queue job %s: redis unavailable; the reaper will", flight.job.id)
                self._leave(flight)

    def _cancel_rq(self, job, execution, model: str, count: bool) -> None:
        """End the RQ execution and put the job in RQ's canceled registry; record it canceled."""
        from rq.exceptions import InvalidJobOperation
        from rq.executions import cleanup_execution

        with self.redis.pipeline() as pipe:
            cleanup_execution(self.worker, job, pipe, execution)
            pipe.execute()
        try:
            job.cancel()
        except InvalidJobOperation:
            pass
        jobs.finish_record(self.redis, job.id, model, JobStatus.CANCELED, self.runtime.settings.result_ttl,
                           count=count)
        self.webhooks.notify(_record_webhook(self.redis, job.id), job.id, "completed",
                             {"status": JobStatus.CANCELED.value})

    # ---- reporting and Redis outages ----------------------------------------------------------

    def _write_progress(self, force: bool = False) -> None:
        now_ = time.time()
        if not force and now_ - self._last_progress < self.progress_interval:
            return
        self._last_progress = now_
        previews = self._previews(now_)
        with self.redis.pipeline() as pipe:
            for flight in self.in_flight:
                step, total = flight.step, flight.total
                elapsed = now_ - flight.started
                eta = elapsed / step * (total - step) if step else None
                progress = {"step": step, "total": total, "fraction": round(step / total, 4),
                            "eta_seconds": None if eta is None else round(eta, 1), "updated_at": now_}
                pipe.hset(jobs.job_key(flight.job.id), "progress", jobs.dumps(progress))
                jobs.publish(pipe, flight.job.id, "progress", progress)
                self.webhooks.notify(flight.webhook, flight.job.id, "progress", progress)
                if flight.job.id in previews:
                    pipe.set(jobs.preview_key(flight.job.id), previews[flight.job.id],
                             ex=self.runtime.settings.result_ttl)
                    jobs.publish(pipe, flight.job.id, "preview", {"url": f"/jobs/{flight.job.id}/preview",
                                                                   "step": step})
            self.stats.flush(pipe, self.runtime.preset.name)
            pipe.execute()

    def _previews(self, now_: float) -> dict[str, bytes]:
        """PNGs of the current x0 estimates (sample 0 of each job), every preview_interval."""
        if now_ - self._last_preview < self.preview_interval or not self.in_flight:
            return {}
        self._last_preview = now_
        with torch.inference_mode():
            estimates = self.batch.estimate([f.samples[0] for f in self.in_flight])
        return {f.job.id: self.runtime.preview_png(x) for f, x in zip(self.in_flight, estimates)}

    def _flush_stats(self) -> None:
        with self.redis.pipeline() as pipe:
            self.stats.flush(pipe, self.runtime.preset.name)
            pipe.execute()

    def _wait_for_redis(self, limit: float = 600.0) -> None:
        """Block (the batch stays in memory) until Redis answers again; give up after `limit`."""
        deadline, delay = time.time() + limit, 0.5
        while time.time() < deadline:
            try:
                self.redis.ping()
                log.info("redis is back: resuming %d job(s)", len(self.in_flight))
                return
            except REDIS_ERRORS:
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise redis.exceptions.ConnectionError(f"redis unreachable for {limit:.0f}s")

    def _until_redis(self, action) -> None:
        while True:
            try:
                return action()
            except REDIS_ERRORS as exc:
                log.error("redis unavailable (%s)", exc)
                self._wait_for_redis()


def _record_webhook(redis, job_id: str) -> dict | None:
    raw = redis.hget(jobs.job_key(job_id), "params")
    return None if raw is None else json.loads(raw).get("webhook")
