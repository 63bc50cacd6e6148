"""The function path jobs are enqueued under (`worker.jobs.TASK_PATH`).

Jobs are run by `repaint worker`, whose batching engine (worker.engine) takes them from the
queue and runs many at once on the resident model; it never calls this function. A plain
`rq worker` that picks up a job calls it and fails the job with a clear message instead of
loading a model per job.
"""

from __future__ import annotations


def inpaint(job_id: str) -> dict:
    raise RuntimeError(f"job {job_id} must run on a model worker (`repaint worker`), not a plain RQ worker")
