"""The RQ job function. The API enqueues it by path (`worker.jobs.TASK_PATH`)."""

from __future__ import annotations

import logging
import threading
import time
import traceback

from redis import Redis
from rq import get_current_job

from . import jobs
from .jobs import JobStatus
from .runtime import JobInputError, JobParams, Runtime

log = logging.getLogger(__name__)

# Set by worker.main before the worker starts taking jobs: the model stays resident.
_runtime: Runtime | None = None
_keep_alive = None  # callable(job) that refreshes the RQ worker's heartbeats


def install(runtime: Runtime, keep_alive=None) -> None:
    global _runtime, _keep_alive
    _runtime, _keep_alive = runtime, keep_alive


class ProgressReporter:
    """Writes the latest progress to Redis from a thread, at most and at least every interval.

    The sampler calls `update` on every step (cheap: it only stores numbers); the thread
    writes them, so progress moves even while one step takes longer than the interval, and it
    keeps the RQ worker's heartbeat alive during a long job.
    """

    def __init__(self, redis: Redis, job_id: str, total: int, interval: float, keep_alive=None):
        self.redis, self.job_id, self.total, self.interval = redis, job_id, total, interval
        self.keep_alive = keep_alive
        self.step = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{job_id[:8]}", daemon=True)

    def update(self, step: int, total: int, x0=None) -> None:
        self.step = step

    def __enter__(self) -> "ProgressReporter":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _write(self) -> None:
        step, elapsed = self.step, time.time() - self.started
        eta = elapsed / step * (self.total - step) if step else None
        progress = {"step": step, "total": self.total, "fraction": round(step / self.total, 4),
                    "eta_seconds": None if eta is None else round(eta, 1), "updated_at": time.time()}
        self.redis.hset(jobs.job_key(self.job_id), "progress", jobs.dumps(progress))

    def _run(self) -> None:
        last_beat = time.time()
        while not self._stop.wait(self.interval):
            try:
                self._write()
                if self.keep_alive is not None and time.time() - last_beat > 10:
                    self.keep_alive()
                    last_beat = time.time()
            except Exception:  # a Redis hiccup must not kill the job; the next tick retries
                log.warning("progress write for %s failed", self.job_id, exc_info=True)


def _finish(redis: Redis, job_id: str, model: str, status: JobStatus, ttl: int, **fields) -> None:
    finished = time.time()
    key = jobs.job_key(job_id)
    started = redis.hget(key, "started_at")
    with redis.pipeline() as pipe:
        pipe.hset(key, mapping={"status": status.value, "finished_at": finished,
                                **{k: jobs.dumps(v) for k, v in fields.items()}})
        pipe.expire(key, ttl)
        pipe.hincrby(jobs.metrics_key(model), f"jobs_{status.value}_total", 1)
        if started is not None:
            jobs.record_duration(pipe, model, "run", finished - float(started))
        pipe.execute()


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def inpaint(job_id: str) -> dict:
    """Run the inpainting job `job_id` on this worker's resident model."""
    if _runtime is None:
        raise RuntimeError("worker.tasks.inpaint runs only inside a model worker (repaint worker)")
    runtime = _runtime
    job = get_current_job()
    redis: Redis = job.connection
    key = jobs.job_key(job_id)
    record = jobs.decode_record(redis.hgetall(key))
    if not record:
        raise RuntimeError(f"job {job_id} has no record (expired?)")
    model = record["model"]
    ttl = runtime.settings.result_ttl
    started = time.time()
    with redis.pipeline() as pipe:
        pipe.hset(key, mapping={"status": JobStatus.RUNNING.value, "started_at": started,
                                "worker": job.worker_name or ""})
        pipe.hincrby(key, "attempts", 1)
        jobs.record_duration(pipe, model, "queue_wait", started - record["created_at"])
        pipe.execute()
    try:
        params = JobParams.from_dict(record["params"])
        image = redis.get(jobs.input_key(job_id, "image"))
        mask = redis.get(jobs.input_key(job_id, "mask"))
        if image is None or mask is None:
            raise JobInputError("the job's uploaded image expired before a worker took it")
        total = params.evaluations
        keep_alive = None if _keep_alive is None else (lambda: _keep_alive(job))
        with ProgressReporter(redis, job_id, total, runtime.settings.progress_interval, keep_alive) as reporter:
            results = runtime.inpaint(image, mask, params, progress=reporter.update)
            reporter.step = total
    except Exception as exc:
        kind = "invalid_input" if isinstance(exc, JobInputError) else type(exc).__name__
        if _is_out_of_memory(exc):
            kind = "out_of_memory"
            runtime.release_memory()  # keep serving: the next job starts from a clean cache
        log.error("job %s failed: %s", job_id, traceback.format_exc())
        _finish(redis, job_id, model, JobStatus.FAILED, ttl,
                error={"type": kind, "message": str(exc) or type(exc).__name__})
        raise
    evaluations = params.evaluations * params.num_samples
    with redis.pipeline() as pipe:
        for i, png in enumerate(results):
            pipe.set(jobs.result_key(job_id, i), png, ex=ttl)
        pipe.delete(jobs.input_key(job_id, "image"), jobs.input_key(job_id, "mask"))
        pipe.hincrby(jobs.metrics_key(model), "model_evaluations_total", evaluations)
        if runtime.seconds_per_evaluation is not None:
            pipe.set(jobs.speed_key(model), runtime.seconds_per_evaluation)
        pipe.execute()
    progress = {"step": params.evaluations, "total": params.evaluations, "fraction": 1.0,
                "eta_seconds": 0.0, "updated_at": time.time()}
    _finish(redis, job_id, model, JobStatus.SUCCEEDED, ttl, progress=progress,
            result={"count": len(results)})
    return {"results": len(results), "evaluations": evaluations}
