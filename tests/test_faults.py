"""Nothing lost: real workers killed and stopped, a real Redis restarted, memory running out."""

from __future__ import annotations

import io
import re
import signal
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import face_and_mask
from tests.procs import ApiProcess, RedisServer, WorkerProcess, submit, wait_final, wait_until
from worker import jobs

LONG = {"steps": 250, "jump_length": 10, "jump_n_sample": 4}  # 250 + 3*10*24 = 970 evaluations
MEDIUM = {"steps": 100, "jump_length": 10, "jump_n_sample": 3}  # 100 + 2*10*9 = 280 evaluations
def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


FAST = {"steps": 20, "jump_length": 5, "jump_n_sample": 2}
FAST_DETECTION = {"REPAINT_HEARTBEAT_TTL": "10"}


@pytest.fixture()
def api(redis_server, redis_db):
    proc = ApiProcess(redis_server.url)
    yield proc
    proc.stop()


def running_with_progress(client, job_id):
    job = client.get(f"/jobs/{job_id}").json()
    return job["status"] == "running" and job["progress"] and job["progress"]["step"] > 5


def test_sigkilled_worker_job_is_finished_by_another_worker(api, redis_server, redis_db):
    client = api.client()
    doomed = WorkerProcess(redis_server.url, "doomed", **FAST_DETECTION).wait_ready(redis_db)
    job_id = submit(client, *face_and_mask(), **MEDIUM)
    wait_until(lambda: running_with_progress(client, job_id), 60, "job running")
    doomed.stop(signal.SIGKILL)
    rescuer = WorkerProcess(redis_server.url, "rescuer", **FAST_DETECTION).wait_ready(redis_db)
    try:
        seen = []
        job = wait_final(client, job_id, timeout=240, seen=seen)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2 and job["last_error"]["type"] == "worker_lost"
        assert "failed" not in {j["status"] for j in seen}  # never shown failed while it would be retried
        assert redis_db.hget(f"repaint:job:{job_id}", "worker") == b"rescuer"
    finally:
        rescuer.stop()


def test_lost_job_fails_with_a_reason_after_its_last_attempt(redis_server, redis_db):
    api = ApiProcess(redis_server.url, REPAINT_MAX_ATTEMPTS="1")
    try:
        client = api.client()
        doomed = WorkerProcess(redis_server.url, "doomed1", **FAST_DETECTION).wait_ready(redis_db)
        job_id = submit(client, *face_and_mask(), **MEDIUM)
        wait_until(lambda: running_with_progress(client, job_id), 60, "job running")
        doomed.stop(signal.SIGKILL)
        reaper = WorkerProcess(redis_server.url, "reaper", **FAST_DETECTION).wait_ready(redis_db)
        try:
            job = wait_final(client, job_id, timeout=120)
            assert job["status"] == "failed" and job["error"]["type"] == "worker_lost"
            assert "1 attempt" in job["error"]["message"]
        finally:
            reaper.stop()
    finally:
        api.stop()


def test_sigterm_finishes_the_running_job_then_exits(api, redis_server, redis_db):
    client = api.client()
    worker = WorkerProcess(redis_server.url, "graceful").wait_ready(redis_db)
    job_id = submit(client, *face_and_mask(), **MEDIUM)
    wait_until(lambda: running_with_progress(client, job_id), 60, "job running")
    worker.proc.send_signal(signal.SIGTERM)
    at_sigterm = client.get(f"/jobs/{job_id}").json()
    assert worker.proc.wait(timeout=120) == 0
    assert at_sigterm["status"] == "running" and at_sigterm["progress"]["step"] < at_sigterm["progress"]["total"]
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1


def test_sigterm_after_the_grace_period_puts_the_job_back(api, redis_server, redis_db):
    client = api.client()
    worker = WorkerProcess(redis_server.url, "impatient", REPAINT_SHUTDOWN_GRACE="0").wait_ready(redis_db)
    job_id = submit(client, *face_and_mask(), **MEDIUM)
    wait_until(lambda: running_with_progress(client, job_id), 60, "job running")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["last_error"]["type"] == "requeued"
    successor = WorkerProcess(redis_server.url, "successor").wait_ready(redis_db)
    try:
        job = wait_final(client, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2
    finally:
        successor.stop()


def test_redis_restart_keeps_queued_jobs_and_everyone_reconnects():
    server = RedisServer(appendonly=True).start()
    api = ApiProcess(server.url)
    worker = None
    try:
        client = api.client()
        queued = [submit(client, *face_and_mask(), **FAST) for _ in range(3)]  # no worker yet: they wait
        server.stop(signal.SIGTERM)
        r = client.get(f"/jobs/{queued[0]}")
        assert r.status_code == 503 and "Redis" in r.json()["detail"] and r.headers["retry-after"]
        server.start()
        assert wait_until(lambda: client.get(f"/jobs/{queued[0]}").status_code == 200, 30, "API recovery")
        assert all(client.get(f"/jobs/{j}").json()["status"] == "queued" for j in queued)
        worker = WorkerProcess(server.url, "survivor").wait_ready(server.client())
        assert all(wait_final(client, j)["status"] == "succeeded" for j in queued)
        # The running worker rides out a restart by itself. The sleep is the fault's length (Redis
        # down for 2 s, so that the worker's connection fails), not a wait for something to happen.
        server.stop(signal.SIGTERM)
        time.sleep(2)
        server.start()
        later = wait_until(lambda: submit(client, *face_and_mask(), **FAST), 30, "API accepting again")
        assert wait_final(client, later, timeout=120)["status"] == "succeeded"
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
        server.stop()


def test_out_of_memory_shrinks_the_batch_instead_of_failing_jobs(api, redis_server, redis_db):
    client = api.client()
    worker = WorkerProcess(redis_server.url, "tight", faults=["--oom-above", "2"],
                           REPAINT_MAX_BATCH="8").wait_ready(redis_db)
    try:
        ids = [submit(client, *face_and_mask(seed=i), steps=50, jump_length=5, jump_n_sample=3) for i in range(5)]
        assert [wait_final(client, i)["status"] for i in ids] == ["succeeded"] * 5
        text = client.get("/metrics").text
        assert 'repaint_jobs_total{model="tiny",status="failed"} 0.0' in text
        # It did run out, and shrank to what fits. The new limit is half the pass that failed
        # (3 samples in flight give 1, 4 or 5 give 2), which depends on how many jobs had
        # joined the batch when it ran out; every limit it logged fits the 2 that fit.
        limits = [int(n) for n in re.findall(r"limit now (\d+) samples per pass", worker.output())]
        assert limits and all(n <= 2 for n in limits), worker.output()[-3000:]
    finally:
        worker.stop()


def test_a_lone_job_larger_than_memory_runs_in_smaller_passes(api, redis_server, redis_db):
    """Four samples where only two fit in one pass: the job used to fail as too big; now its
    samples run over passes of two, and the result is the one a roomy worker makes."""
    client = api.client()
    job = dict(steps=10, jump_length=5, jump_n_sample=2, num_samples=4, seed=3)
    worker = WorkerProcess(redis_server.url, "tight-alone", faults=["--oom-above", "2"],
                           REPAINT_MAX_BATCH="8").wait_ready(redis_db)
    try:
        tight = wait_final(client, submit(client, *face_and_mask(seed=4), **job))
        assert tight["status"] == "succeeded" and tight["attempts"] == 1, tight
        tight_pngs = [client.get(f"/jobs/{tight['id']}/result?index={i}").content for i in range(4)]
    finally:
        worker.stop()
    worker = WorkerProcess(redis_server.url, "roomy", REPAINT_MAX_BATCH="8").wait_ready(redis_db)
    try:
        roomy = wait_final(client, submit(client, *face_and_mask(seed=4), **job))
        roomy_pngs = [client.get(f"/jobs/{roomy['id']}/result?index={i}").content for i in range(4)]
    finally:
        worker.stop()
    for a, b in zip(tight_pngs, roomy_pngs):
        assert np.abs(decode(a) - decode(b)).max() <= 1  # float32 rounding of another batch size


def test_a_sample_that_never_fits_is_tried_once_more_then_fails(api, redis_server, redis_db):
    """Running out of memory alone may be memory held elsewhere at that moment: the job is queued
    once more, free; the second time it fails for good, saying so."""
    client = api.client()
    worker = WorkerProcess(redis_server.url, "no-room", faults=["--oom-above", "0"]).wait_ready(redis_db)
    try:
        job = wait_final(client, submit(client, *face_and_mask(), **FAST))
        assert job["status"] == "failed" and job["error"]["type"] == "out_of_memory", job
        assert "tried twice" in job["error"]["message"] and job["attempts"] == 2
        assert job["last_error"]["type"] == "out_of_memory_alone"
    finally:
        worker.stop()


def test_canceling_a_running_job_stops_it_and_frees_the_worker(api, redis_server, redis_db):
    client = api.client()
    worker = WorkerProcess(redis_server.url, "cancelable").wait_ready(redis_db)
    try:
        job_id = submit(client, *face_and_mask(), **LONG)
        wait_until(lambda: running_with_progress(client, job_id), 60, "job running")
        r = client.delete(f"/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        job = wait_final(client, job_id, timeout=30)
        assert job["status"] == "canceled" and job["progress"]["step"] < job["progress"]["total"]
        assert wait_final(client, submit(client, *face_and_mask(), **FAST))["status"] == "succeeded"
    finally:
        worker.stop()


def test_job_timeout_fails_the_job_with_a_reason(redis_server, redis_db):
    api = ApiProcess(redis_server.url, REPAINT_JOB_TIMEOUT="2")
    worker = WorkerProcess(redis_server.url, "slowpoke").wait_ready(redis_db)
    try:
        client = api.client()
        job = wait_final(client, submit(client, *face_and_mask(), **LONG))
        assert job["status"] == "failed" and job["error"]["type"] == "timeout"
        assert wait_final(client, submit(client, *face_and_mask(), **FAST))["status"] == "succeeded"
    finally:
        worker.stop()
        api.stop()


def test_poison_job_fails_after_one_attempt_while_its_neighbour_succeeds(api, redis_server, redis_db):
    """A job whose result cannot be encoded (WebP stops at 16383 px) used to crash the engine's
    finishing code, put every job back and loop forever. The API now refuses it at submit and
    the worker before sampling; one queued anyway still fails alone."""
    from tests.test_chaos import submit_poison

    client = api.client()
    worker = WorkerProcess(redis_server.url, "poisoned").wait_ready(redis_db)
    try:
        neighbour = submit(client, *face_and_mask(), steps=60, jump_length=10, jump_n_sample=3)
        poison = submit_poison(redis_db)
        job = wait_final(client, poison, timeout=120)
        assert job["status"] == "failed" and job["error"]["type"] == "invalid_input", job
        assert job["attempts"] == 1 and "webp" in job["error"]["message"]
        assert wait_final(client, neighbour)["status"] == "succeeded"
        assert worker.proc.poll() is None
        # Never started again: a job submitted after it has run to the end on the one worker,
        # which would have met the poison again first had it gone back to the queue.
        assert wait_final(client, submit(client, *face_and_mask(), **FAST))["status"] == "succeeded"
        job = client.get(f"/jobs/{poison}").json()
        assert job["status"] == "failed" and job["attempts"] == 1, job
        assert redis_db.llen(f"rq:queue:{jobs.queue_name('tiny')}") == 0
    finally:
        worker.stop()


def test_redis_down_longer_than_the_heartbeat_ttl_leaves_no_job_running():
    """Observed before the ledger: two workers, four jobs, Redis stopped for 18 s (TTL 10 s) and
    restarted with its AOF; one job stayed `running` for good."""
    server = RedisServer(appendonly=True).start()
    api = ApiProcess(server.url)
    workers = [WorkerProcess(server.url, f"outage{i}", **FAST_DETECTION) for i in range(2)]
    try:
        for w in workers:
            w.wait_ready(server.client())
        client = api.client()
        ids = [submit(client, *face_and_mask(seed=i), **MEDIUM) for i in range(4)]
        wait_until(lambda: any(running_with_progress(client, j) for j in ids), 60, "jobs running")
        server.stop(signal.SIGTERM)
        time.sleep(18)  # the fault itself: Redis away for longer than the TTL, so every lease lapses
        server.start()
        finished = [wait_final(client, j, timeout=240) for j in ids]
        assert [j["status"] for j in finished] == ["succeeded"] * 4, finished
        redis = server.client()
        assert redis.scard("repaint:running") == 0
        # Live owners renewed their leases after the outage: at most the reaper's patience was spent.
        assert all(j["failures"] == 0 for j in finished), [j["last_error"] for j in finished]
    finally:
        for w in workers:
            w.stop()
        api.stop()
        server.stop()


def test_a_stuck_forward_pass_is_reaped_and_its_worker_exits_defunct(api, redis_server, redis_db):
    client = api.client()
    stuck = WorkerProcess(redis_server.url, "stuck", faults=["--hang-seconds", "120"], REPAINT_STALL_TIMEOUT="2",
                          **FAST_DETECTION).wait_ready(redis_db)
    job_id = submit(client, *face_and_mask(), **FAST)
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["status"] == "running", 60, "job running")
    assert stuck.proc.wait(timeout=60) == 70  # EX_SOFTWARE: the supervisor restarts it
    ready = client.get("/readyz").json()
    assert any("stuck declared itself defunct" in w and "no progress" in w for w in ready["warnings"]), ready
    rescuer = WorkerProcess(redis_server.url, "unstuck", **FAST_DETECTION).wait_ready(redis_db)
    try:
        job = wait_final(client, job_id, timeout=120)
        assert job["status"] == "succeeded" and job["attempts"] == 2 and job["last_error"]["type"] == "worker_lost"
    finally:
        rescuer.stop()


def test_repeated_forward_pass_failures_make_the_worker_defunct(api, redis_server, redis_db):
    """A sticky device error used to fail every job the worker took, using up their attempts."""
    client = api.client()
    broken = WorkerProcess(redis_server.url, "broken", faults=["--fail-passes"],
                           REPAINT_MAX_PASS_FAILURES="2").wait_ready(redis_db)
    ids = [submit(client, *face_and_mask(seed=i), **FAST) for i in range(2)]
    assert broken.proc.wait(timeout=60) == 70
    assert "2 forward passes failed in a row" in client.get("/readyz").text
    jobs_after = [client.get(f"/jobs/{i}").json() for i in ids]
    assert all(j["status"] == "queued" and j["failures"] >= 1 for j in jobs_after), jobs_after
    healthy = WorkerProcess(redis_server.url, "healthy").wait_ready(redis_db)
    try:
        assert [wait_final(client, i)["status"] for i in ids] == ["succeeded"] * 2
    finally:
        healthy.stop()
