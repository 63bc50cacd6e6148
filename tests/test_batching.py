"""Continuous batching through real processes: shared forward passes, RQ registries, isolation."""

from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from tests.conftest import face_and_mask
from tests.procs import ApiProcess, WorkerProcess, submit, wait_final, wait_until
from worker import jobs


@pytest.fixture()
def api(redis_server, redis_db):
    proc = ApiProcess(redis_server.url)
    yield proc
    proc.stop()


def start_worker(redis_server, redis_db, name="b1", **extra):
    return WorkerProcess(redis_server.url, name, **extra).wait_ready(redis_db)


def image_of(client, job) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(client.get(job["links"]["results"][0]).content)), dtype=np.int16)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_concurrent_jobs_share_forward_passes_and_match_solo_runs(api, redis_server, redis_db):
    worker = start_worker(redis_server, redis_db)
    try:
        client = api.client()
        image, mask = face_and_mask(seed=3)
        mine = {"steps": 30, "jump_length": 5, "jump_n_sample": 3, "seed": 21}
        solo = wait_final(client, submit(client, image, mask, **mine))
        # Same job again, now among neighbours with other step counts, jump settings and sizes.
        ids = [submit(client, image, mask, steps=40, jump_length=10, jump_n_sample=2, seed=1),
               submit(client, image, mask, **mine),
               submit(client, *face_and_mask(seed=4), steps=25, jump_length=5, jump_n_sample=2, num_samples=2),
               submit(client, image, mask, steps=30, jump_length=3, jump_n_sample=2, seed=3)]
        finished = [wait_final(client, i) for i in ids]
        assert all(j["status"] == "succeeded" for j in finished), finished
        # Same seed, same output, whatever shared the batch (within float rounding to uint8).
        assert np.abs(image_of(client, finished[1]) - image_of(client, solo)).max() <= 1
        text = client.get("/metrics").text
        count = metric(text, 'repaint_batch_size_count{model="tiny"}')
        total = metric(text, 'repaint_batch_size_sum{model="tiny"}')
        assert count > 0 and total / count > 1.5, (total, count)  # forward passes were shared
        assert metric(text, 'repaint_forward_seconds_count{model="tiny"}') == count
        # RQ's picture is true: every job finished in RQ's own registries.
        queue = Queue(jobs.queue_name("tiny"), connection=redis_db, serializer=JSONSerializer)
        assert set(ids) | {solo["id"]} <= set(FinishedJobRegistry(queue=queue).get_job_ids())
        assert all(Job.fetch(i, connection=redis_db, serializer=JSONSerializer).get_status() == "finished"
                   for i in ids)
    finally:
        worker.stop()


def test_running_jobs_are_all_in_rqs_started_registry(api, redis_server, redis_db):
    worker = start_worker(redis_server, redis_db)
    try:
        client = api.client()
        image, mask = face_and_mask()
        # 190 evaluations each: time enough to see the three running together.
        ids = [submit(client, image, mask, steps=100, jump_length=10, jump_n_sample=2) for _ in range(3)]
        queue = Queue(jobs.queue_name("tiny"), connection=redis_db, serializer=JSONSerializer)
        started = wait_until(lambda: set(StartedJobRegistry(queue=queue).get_job_ids()) == set(ids)
                             and [client.get(f"/jobs/{i}").json()["status"] for i in ids] == ["running"] * 3,
                             60, "three jobs running together")
        assert started
        for i in ids:
            assert Job.fetch(i, connection=redis_db, serializer=JSONSerializer).get_status() == "started"
        assert all(wait_final(client, i)["status"] == "succeeded" for i in ids)
    finally:
        worker.stop()


def test_bad_job_fails_alone_while_its_neighbour_finishes(api, redis_server, redis_db):
    worker = start_worker(redis_server, redis_db)
    try:
        client = api.client()
        image, mask = face_and_mask()
        good = submit(client, image, mask, steps=100, jump_length=10, jump_n_sample=3)  # 280 evaluations
        wait_until(lambda: client.get(f"/jobs/{good}").json()["status"] == "running", 60, "good job running")
        info = json.loads(redis_db.hget(jobs.models_key(), "tiny"))
        redis_db.hset(jobs.models_key(), "tiny", json.dumps({**info, "class_cond": True, "num_classes": 10}))
        bad = submit(client, *face_and_mask(), class_label=1)
        redis_db.hset(jobs.models_key(), "tiny", json.dumps(info))
        bad_job = wait_final(client, bad)
        assert bad_job["status"] == "failed" and bad_job["error"]["type"] == "invalid_input"
        assert client.get(f"/jobs/{good}").json()["status"] == "running"
        assert wait_final(client, good)["status"] == "succeeded"
        queue = Queue(jobs.queue_name("tiny"), connection=redis_db, serializer=JSONSerializer)
        assert bad in FailedJobRegistry(queue=queue).get_job_ids()
    finally:
        worker.stop()


def test_max_batch_one_runs_jobs_one_at_a_time(api, redis_server, redis_db):
    worker = start_worker(redis_server, redis_db, REPAINT_MAX_BATCH="1")
    try:
        client = api.client()
        image, mask = face_and_mask()
        ids = [submit(client, image, mask, steps=20, jump_length=5, jump_n_sample=2) for _ in range(3)]
        done = [wait_final(client, i) for i in ids]
        assert all(j["status"] == "succeeded" for j in done)
        spans = sorted((j["started_at"], j["finished_at"]) for j in done)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlap
        text = client.get("/metrics").text
        assert metric(text, 'repaint_batch_size_sum{model="tiny"}') == metric(text, 'repaint_batch_size_count{model="tiny"}')
    finally:
        worker.stop()
