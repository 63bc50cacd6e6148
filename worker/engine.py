"""The worker's loop: RQ hands it jobs, the ledger records them, the scheduler batches them.

RQ hands a worker one job at a time and has no batch dequeue, so between forward passes this
loop takes further queued jobs itself (RQ's own dequeue). Every change of a job's status is a
ledger transition (worker.ledger), which also keeps RQ's registries true, so `rq info` and
rq-dashboard show each job where it is. Which samples share the next forward pass is the
scheduler's business (worker.scheduler); liveness (heartbeats gated on the loop's progress,
the reaper of lost leases) is worker.liveness's.

Nothing is lost: bad data or an unencodable result fails only its job, at once; a canceled job
leaves before the next step; on SIGTERM the engine stops admitting, finishes what it holds
within the grace period and puts the rest back at the front of the queue; out of memory halves
the batch and puts the newest jobs back; a Redis outage pauses the loop (the batch stays in
memory) until Redis is back; repeated forward-pass failures make the worker declare itself
defunct and exit, so that its supervisor restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

import redis.exceptions
from rq.exceptions import StopRequested

from . import geometry, jobs
from .ledger import Lease, Ledger, Outcome
from .params import JobParams
from .reporter import ProgressReporter, Snapshot, redis_is_full
from .runtime import JobInputError, Runtime
from .scheduler import BatchScheduler, Flight
from .settings import WorkerSettings
from .webhooks import WebhookSender

if TYPE_CHECKING:
    from rq import Queue
    from rq.job import Job

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


# Seconds between two looks at the cancel flags of the jobs in flight: a small model's pass takes
# a few milliseconds on a GPU, and a Redis round trip per pass would be a sizeable share of it.
CANCEL_CHECK_INTERVAL = 0.2

# `last_error.type` of a job put back once after running out of memory alone.
OUT_OF_MEMORY_ALONE = "out_of_memory_alone"


def error_of(exc: BaseException, runtime: Runtime | None = None) -> dict:
    """The `{"type", "message"}` a job record shows for an exception."""
    if isinstance(exc, JobInputError):
        kind = "invalid_input"
    elif runtime is not None and runtime.is_out_of_memory(exc):
        kind = "out_of_memory"
    elif isinstance(exc, TimeoutError):
        kind = "timeout"
    else:
        kind = type(exc).__name__
    return {"type": kind, "message": str(exc) or type(exc).__name__}


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

    def __init__(self, worker, runtime: Runtime, ledger: Ledger, settings: WorkerSettings, *, max_batch: int,
                 webhooks: WebhookSender):
        self.worker = worker
        self.runtime = runtime
        self.ledger = ledger
        self.settings = settings
        self.redis = worker.connection
        self.model = runtime.preset.name
        self.scheduler = BatchScheduler(runtime, max_batch=max_batch, sizes=runtime.speed.buckets)
        self.stats = StepStats()
        self.webhooks = webhooks
        self.defunct: str | None = None
        # Written by the loop, read by the heartbeat thread: when the forward pass now running
        # began (None between passes). Only a pass can hang the loop for long.
        self.in_pass_since: float | None = None
        self._lost: set[Lease] = set()        # leases the heartbeat thread found owned by no one
        self._lost_lock = threading.Lock()
        self._pass_failures = 0
        self._charged: set[str] = set()       # jobs charged an attempt in the current failure streak
        self._last_progress = 0.0
        self._last_preview = 0.0
        self._peers_checked = 0.0
        self._idle_peer = False
        self._stop_seen: float | None = None
        self._cancels_checked = 0.0
        self.reporter = ProgressReporter(ledger, runtime.preview_png, webhooks, self.mark_lost)

    # ---- what the heartbeat thread needs ---------------------------------------------------------

    @property
    def flights(self) -> list[Flight]:
        return list(self.scheduler.flights)

    def stall_deadline(self) -> float:
        """Seconds one forward pass may take before the worker stops vouching for its jobs:
        REPAINT_STALL_TIMEOUT, or 20 measured passes when that is longer. No served pass
        compiles (REPAINT_COMPILE compiles and warms up on a thread of its own, and the
        self-test ran the eager network before the first job), so the first pass gets no more."""
        per_pass = self.scheduler.seconds_per_pass or 0.0
        return max(self.settings.stall_timeout, 20 * per_pass)

    def stalled_for(self) -> float:
        """How long the forward pass now running has taken, once past the deadline (else 0)."""
        since = self.in_pass_since
        if since is None:
            return 0.0
        running = time.monotonic() - since
        return running if running > self.stall_deadline() else 0.0

    def mark_lost(self, leases) -> None:
        with self._lost_lock:
            self._lost.update(leases)

    # ---- admission -------------------------------------------------------------------------

    def _next_job_size(self) -> int | None:
        """num_samples of the job at the head of the queue, without taking it (None: empty)."""
        for queue in self.worker.queues:
            ids = queue.get_job_ids(0, 1)
            if ids:
                return self._size_of(ids[0])
        return None

    def _size_of(self, job_id: str) -> int:
        raw = self.redis.hget(jobs.job_key(job_id), "num_samples")
        return int(raw) if raw is not None else 1

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
        """Take queued jobs while their samples fit (a job larger than the limit runs alone)."""
        from rq import Queue

        busy = bool(self.scheduler.flights)
        while not self.worker._stop_requested and not (busy and self._an_idle_peer_exists()):
            if busy and self.scheduler.free_slots <= 0:
                return  # full: no Redis round trip on this tick
            size = self._next_job_size()
            if size is None or not self.scheduler.fits(size):
                return
            got = Queue.dequeue_any(self.worker.queues, None, connection=self.redis,
                                    job_class=self.worker.job_class, serializer=self.worker.serializer)
            if got is None:
                return
            rq_job, queue = got
            if busy and not self.scheduler.fits(self._size_of(rq_job.id)):
                # Not the job sized above: another worker took that one meanwhile, and this one
                # is larger than the room left. Back to the front of its queue, untouched.
                self._until_redis(lambda: self.ledger.recover_undelivered(queue.name, rq_job.id,
                                                                          still_delivered=True))
                return
            self.take(rq_job)
            busy = bool(self.scheduler.flights)

    def take(self, rq_job: "Job") -> None:
        """Start a dequeued job in the ledger, then put its samples into the batch.

        Redis calls here wait for Redis and retry (the start with the same token), so that a
        started job never ends up owned by this worker but outside its batch."""
        token = uuid.uuid4().hex
        started = self._until_redis(lambda: self.ledger.start(rq_job, self.worker.name,
                                                              self.settings.heartbeat_ttl, token=token))
        record = started.record or {}
        if started.outcome != Outcome.OK:
            log.info("delivery of job %s not run: %s", rq_job.id, started.outcome.value)
            if started.outcome in (Outcome.CANCELED, Outcome.FAILED):
                self._notify_final(record.get("params", {}).get("webhook"), rq_job.id, started.outcome.value,
                                   record.get("error"))
            return
        lease = Lease(rq_job.id, started.token)
        try:
            params = JobParams.from_record(record["params"])
            image_png, mask_png = self._until_redis(lambda: self.redis.mget(
                jobs.input_key(lease.job_id, "image"), jobs.input_key(lease.job_id, "mask")))
            if image_png is None or mask_png is None:
                raise JobInputError("the job's upload expired before a worker took it")
            prepared = self.runtime.prepare(image_png, mask_png, params)
            used = {"blend": geometry.auto_blend(prepared.plan) if params.blend is None else params.blend}
            self._until_redis(lambda: self.ledger.set_plan(lease, prepared.plan.describe(), used))
            timeout = record.get("timeout") or None
            retried = (record.get("last_error") or {}).get("type") == OUT_OF_MEMORY_ALONE
            flight = self.scheduler.admit(lease.job_id, lease.token, params, prepared,
                                          timeout=timeout, webhook=params.webhook, retried_out_of_memory=retried)
        except (StopRequested, *REDIS_ERRORS):
            raise  # a cold stop: the job's lease lapses and the reaper re-queues it
        except Exception as exc:
            # Bad data fails this job alone, at once; an unexpected error here may be the
            # machine's (a device that fails to take the tensors), so it uses an attempt.
            deterministic = isinstance(exc, JobInputError)
            log.warning("job %s could not join the batch: %s", lease.job_id, exc)
            self._fail(lease, record.get("params", {}).get("webhook"), error_of(exc, self.runtime),
                       retryable=not deterministic)
            return
        self.webhooks.notify(flight.webhook, lease.job_id, "started", {"status": "running"})
        self._write_progress(force=True)

    # ---- the loop --------------------------------------------------------------------------

    def run(self, job: "Job", queue: "Queue") -> None:
        with self._lost_lock:
            self._lost.clear()
        self.runtime.between_jobs()  # the batch is empty: the one moment graphs may be captured
        try:
            self._run(job)
        except BaseException:
            # Cold shutdown (a second SIGTERM) or an unexpected error: nothing in flight is lost.
            if self.scheduler.flights:
                log.warning("engine stopping with %d job(s) in flight: putting them back",
                            len(self.scheduler.flights))
                self._requeue_all("the worker stopped before finishing this job")
            raise

    def _run(self, job: "Job") -> None:
        self._until_redis(lambda: self.take(job))
        while self.scheduler.flights:
            try:
                self.admit_waiting()
                self.tick()
                self.drop_lost()
                self.retire()
                self.check_cancellations()
                self._write_progress()
                self._check_shutdown()
            except REDIS_ERRORS as exc:
                log.error("redis unavailable (%s): batch of %d job(s) paused", exc, len(self.scheduler.flights))
                self._wait_for_redis()
            except redis.exceptions.RedisError as exc:
                # Redis answers but refuses (read-only after a failover, out of memory): the
                # batch waits in memory and the step is tried again; it is not the machine's fault.
                log.error("redis refused a write (%s): batch of %d job(s) paused", exc, len(self.scheduler.flights))
                time.sleep(1.0)
            except StopRequested:
                raise
            except Exception as exc:
                # Not Redis, not one job's data: the machine's. Treated as a failed pass, so a
                # worker that keeps hitting it declares itself defunct instead of looping.
                self._pass_failed(exc)
        self._until_redis(self._flush_stats)

    def tick(self) -> None:
        """One network evaluation for every sample in flight."""
        t0 = time.perf_counter()
        self.in_pass_since = time.monotonic()
        try:
            try:
                ran = self.scheduler.step()
            finally:
                self.in_pass_since = None  # what follows may wait for Redis: that is no stuck pass
        except StopRequested:
            raise  # SIGTERM arrived while the worker was not marked busy: RQ's cold path
        except Exception as exc:
            if self.runtime.is_out_of_memory(exc):
                self._shrink_after_oom(exc)
            else:
                self._pass_failed(exc)
            return
        self._pass_failures = 0
        self._charged.clear()
        if ran:
            self.stats.record(ran, time.perf_counter() - t0)

    def _pass_failed(self, exc: BaseException) -> None:
        """A failure inside the shared forward pass cannot be pinned on one job's data: it is the
        machine's. Every job in the pass uses an attempt; repeated failures make the worker defunct."""
        self._pass_failures += 1
        log.error("forward pass failed (%d in a row)", self._pass_failures, exc_info=exc)
        error = error_of(exc, self.runtime)
        for flight in self.flights:
            lease = Lease(flight.job_id, flight.token)
            if flight.job_id in self._charged:
                # One broken worker costs a job one attempt, however often it takes the job back.
                self._until_redis(lambda: self.ledger.requeue(lease, error["message"]))
            else:
                self._until_redis(lambda: self._fail(lease, flight.webhook, error, retryable=True))
                self._charged.add(flight.job_id)
            self.scheduler.remove(flight)
        if self._pass_failures >= self.settings.max_pass_failures:
            self.declare_defunct(f"{self._pass_failures} forward passes failed in a row; last: {error['message']}")

    def declare_defunct(self, reason: str, *, requeue: bool = True) -> None:
        """Stop taking jobs, say why in Redis (worker.health, /readyz) and let the worker exit.

        `requeue=False` (from the heartbeat thread, while the loop is stuck inside a pass): the
        batch is left alone; the jobs' leases lapse and the reaper hands them to other workers."""
        if self.defunct is None:
            self.defunct = reason
            log.error("worker %s is defunct: %s", self.worker.name, reason)
            try:
                self.redis.set(jobs.defunct_key(self.worker.name),
                               jobs.dumps({"worker": self.worker.name, "model": self.model, "reason": reason,
                                           "at": time.time()}), ex=3600)
            except REDIS_ERRORS:
                pass
        self.worker._stop_requested = True
        if requeue:
            self._requeue_all("the worker became defunct before finishing this job")

    def _shrink_after_oom(self, exc: BaseException) -> None:
        shrink = self.scheduler.shrink_after_oom()
        log.warning("out of memory (%s); limit now %d samples per pass", exc, self.scheduler.limit)
        # The samples had to leave the batch at once to free memory; the ledger calls wait for
        # Redis if they must (they are safe to repeat), so the jobs are not left `running`.
        for flight in shrink.requeue:
            lease = Lease(flight.job_id, flight.token)
            self._until_redis(lambda: self.ledger.requeue(
                lease, "out of memory in a batch; queued again for a smaller batch"))
        if shrink.too_big is not None:
            flight = shrink.too_big
            lease = Lease(flight.job_id, flight.token)
            if not flight.retried_out_of_memory:
                # Memory held elsewhere at that moment (a background compile's warm-up, a
                # neighbour's result being encoded) may be why: once more, from its queue.
                log.warning("job %s ran out of memory alone; queued again once", flight.job_id)
                self._until_redis(lambda: self.ledger.requeue(
                    lease, f"one sample did not fit in memory (tried once more): {exc}", kind=OUT_OF_MEMORY_ALONE))
                return
            error = {"type": "out_of_memory", "message": f"the job does not fit in memory alone (tried twice): {exc}"}
            self._until_redis(lambda: self._fail(lease, flight.webhook, error, retryable=False))

    def drop_lost(self) -> None:
        """Jobs this worker no longer owns (reaped while it was stuck or cut off) leave the batch."""
        with self._lost_lock:
            lost, self._lost = self._lost, set()
        for flight in self.flights:
            if Lease(flight.job_id, flight.token) in lost:
                log.warning("job %s is no longer owned by this worker: dropped from the batch", flight.job_id)
                self.scheduler.remove(flight)

    def retire(self) -> None:
        """Finished jobs leave at once; jobs past their timeout fail and leave."""
        for flight in self.scheduler.finished():
            self._succeed(flight)
        for flight in self.scheduler.overdue():
            self._fail(Lease(flight.job_id, flight.token), flight.webhook, {
                "type": "timeout", "message": f"job exceeded its timeout of {flight.timeout:.0f}s"}, retryable=False)
            self.scheduler.remove(flight)  # after the ledger: a Redis error keeps it here for a retry

    def check_cancellations(self) -> None:
        """A DELETE sets a flag on the job's record; a canceled job leaves within
        CANCEL_CHECK_INTERVAL (one Redis round trip per interval, not per pass)."""
        flights = self.flights
        now_ = time.monotonic()
        if not flights or now_ - self._cancels_checked < CANCEL_CHECK_INTERVAL:
            return
        self._cancels_checked = now_
        flags = self.ledger.cancel_requested([Lease(f.job_id, f.token) for f in flights])
        for flight, flag in zip(flights, flags):
            if flag:
                outcome = self.ledger.cancel_running(Lease(flight.job_id, flight.token))
                self.scheduler.remove(flight)
                if outcome == Outcome.OK:
                    log.info("job %s canceled after %d of %d steps", flight.job_id, flight.step, flight.total)
                    self._notify_final(flight.webhook, flight.job_id, "canceled")

    def _check_shutdown(self) -> None:
        """Warm shutdown (SIGTERM): admit nothing more; after the grace period re-queue the rest."""
        if not self.worker._stop_requested or self.defunct:
            return
        if self._stop_seen is None:
            self._stop_seen = time.time()
            log.info("shutdown requested: finishing %d job(s) within %.0fs", len(self.scheduler.flights),
                     self.settings.shutdown_grace)
        if time.time() - self._stop_seen > self.settings.shutdown_grace:
            self._requeue_all("the worker shut down before finishing this job")

    # ---- leaving the batch ---------------------------------------------------------------------

    def _succeed(self, flight: Flight) -> None:
        lease = Lease(flight.job_id, flight.token)
        try:
            out = self.runtime.result(self.scheduler.batch, flight.samples)
            pngs = self.runtime.encode(out, flight.prepared, flight.params)
        except Exception as exc:
            # Its neighbours carry on whatever happens. A result this job's data cannot make
            # (JobInputError: e.g. past WebP's size limit) fails it now, for good; running out
            # of memory puts it back for free; anything else may be the machine's and uses an attempt.
            log.warning("job %s: finishing failed: %s", flight.job_id, exc)
            out_of_memory = self.runtime.is_out_of_memory(exc)
            if out_of_memory and len(self.scheduler.flights) > 1:
                self.ledger.requeue(lease, f"out of memory while finishing: {exc}")  # alone it may fit
            else:
                self._fail(lease, flight.webhook, error_of(exc, self.runtime),
                           retryable=not (out_of_memory or isinstance(exc, JobInputError)))
            self.scheduler.remove(flight)
            return
        # Ledger first, leave last: if Redis fails half-way, the job stays in flight and this
        # runs again once Redis is back (the transaction applied all or nothing).
        try:
            outcome = self.ledger.succeed(lease, pngs, evaluations=flight.total * len(flight.samples),
                                          seconds_per_pass=self.scheduler.seconds_per_pass)
        except redis.exceptions.ResponseError as exc:
            if not redis_is_full(exc):
                raise
            outcome = self._succeed_in_a_full_redis(flight, lease, pngs, exc)
        self.scheduler.remove(flight)
        if outcome == Outcome.OK:
            self.webhooks.notify(flight.webhook, flight.job_id, "completed", {
                "status": "succeeded",
                "results": [f"/jobs/{flight.job_id}/result?index={i}" for i in range(len(pngs))]})
        elif outcome != Outcome.FAILED:  # FAILED: stored nowhere, already reported by _fail
            log.warning("job %s finished but was not ours to record (%s)", flight.job_id, outcome.value)

    def _succeed_in_a_full_redis(self, flight: Flight, lease: Lease, pngs: list[bytes], exc: Exception) -> Outcome:
        """Redis refused the results (full: maxmemory with noeviction refuses every write, so the
        whole transaction). Admission keeps room for accepted jobs' results, so this is a Redis
        shared with something else, or settings changed: never wait on it with the batch. The
        job's upload and preview are no longer needed (the result is made), so they go first
        (deletes are allowed in a full Redis) and the results are tried once more; if they still
        do not fit, the job fails with `storage_full`, which frees its reservation."""
        log.error("job %s: redis is full (%s): freeing its upload and trying its results once more", flight.job_id, exc)
        if not self.ledger.free_inputs(lease):
            return Outcome.NOT_OWNER  # reaped meanwhile: the job is another execution's now
        try:
            return self.ledger.succeed(lease, pngs, evaluations=flight.total * len(flight.samples),
                                       seconds_per_pass=self.scheduler.seconds_per_pass)
        except redis.exceptions.ResponseError as again:
            if not redis_is_full(again):
                raise
        error = {"type": "storage_full", "message": "the job store (Redis) had no room for this job's results"}
        self._fail(lease, flight.webhook, error, retryable=False)
        return Outcome.FAILED

    def _fail(self, lease: Lease, webhook: dict | None, error: dict, *, retryable: bool) -> None:
        outcome = self.ledger.fail(lease, error, retryable=retryable)
        log.warning("job %s failed (%s: %s): %s", lease.job_id, error["type"], error["message"], outcome.value)
        if outcome == Outcome.FAILED:
            self._notify_final(webhook, lease.job_id, "failed", error)
        elif outcome == Outcome.CANCELED:  # its cancel had been requested: that is how it ends
            self._notify_final(webhook, lease.job_id, "canceled")

    def _notify_final(self, webhook: dict | None, job_id: str, status: str, error: dict | None = None) -> None:
        data = {"status": status}
        if error:
            data["error"] = error
        self.webhooks.notify(webhook, job_id, "completed", data)

    def _requeue_all(self, reason: str) -> None:
        for flight in self.flights:
            self.scheduler.remove(flight)
            try:
                self.ledger.requeue(Lease(flight.job_id, flight.token), reason)
            except redis.exceptions.RedisError:
                log.error("could not re-queue job %s: redis unavailable; its lease lapses and the reaper "
                          "re-queues it", flight.job_id)

    # ---- reporting and Redis outages ----------------------------------------------------------

    def _write_progress(self, force: bool = False) -> None:
        """Every progress interval, a snapshot of the jobs in flight for the reporter thread
        (worker.reporter), which writes it while the loop goes on; every preview interval the
        snapshot carries each job's current estimate too."""
        now_ = time.time()
        if not force and now_ - self._last_progress < self.settings.progress_interval:
            return
        self._last_progress = now_
        flights = self.flights
        updates = []
        for flight in flights:
            step, total = flight.step, flight.total
            elapsed = time.monotonic() - flight.started
            eta = elapsed / step * (total - step) if step else None
            progress = {"step": step, "total": total, "fraction": round(step / total, 4),
                        "eta_seconds": None if eta is None else round(eta, 1), "updated_at": now_}
            updates.append((Lease(flight.job_id, flight.token), progress, flight.webhook))
        self.reporter.submit(Snapshot(updates, self._estimates(now_, flights)))
        self._flush_stats()

    def _estimates(self, now_: float, flights: list[Flight]) -> dict:
        """Each job's current estimate (sample 0), every preview_interval, once the job is a third
        of the way (before that the estimate is mostly noise): made into pixels here, into a
        preview image on the reporter's thread (which runs no torch op: Runtime.estimate_pixels)."""
        flights = [f for f in flights if 3 * f.step >= f.total]
        if now_ - self._last_preview < self.settings.preview_interval or not flights:
            return {}
        self._last_preview = now_
        try:
            pixels = self.runtime.estimate_pixels(self.scheduler.batch, [f.samples[0] for f in flights],
                                                  [f.prepared for f in flights])
            return {f.job_id: (p, f.prepared, f.params, f.step) for f, p in zip(flights, pixels)}
        except Exception as exc:  # previews are a nicety: never a reason to stop the batch
            log.warning("previews skipped: %s", exc)
            return {}

    def _flush_stats(self) -> None:
        with self.redis.pipeline() as pipe:
            self.stats.flush(pipe, self.model)
            pipe.execute()

    def _wait_for_redis(self) -> None:
        """Block (the batch stays in memory) until Redis answers again, however long it takes:
        the jobs' records are in Redis, so there is nothing better to do meanwhile."""
        delay, since = 0.5, time.monotonic()
        while True:
            try:
                self.redis.ping()
                log.info("redis is back after %.0fs: resuming %d job(s)", time.monotonic() - since,
                         len(self.scheduler.flights))
                return
            except REDIS_ERRORS:
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _until_redis(self, action) -> None:
        while True:
            try:
                return action()
            except REDIS_ERRORS as exc:
                log.error("redis unavailable (%s)", exc)
                self._wait_for_redis()
