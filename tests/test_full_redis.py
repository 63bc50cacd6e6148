"""A Redis that fills up (maxmemory with noeviction, as compose ships it), through real processes:
clients get a clear 507 (never a 500, never a 202 for a job then lost), every accepted job
finishes, and the service takes jobs again by itself once space frees."""

from __future__ import annotations

import concurrent.futures
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import png_bytes
from tests.procs import ApiProcess, RedisServer, WorkerProcess, wait_final
from worker import fairness, jobs

QUICK = {"steps": "10", "jump_length": "5", "jump_n_sample": "1"}


def noisy_upload(seed: int, size: int = 300) -> dict:
    """A PNG that does not compress (about 270 kB), and a mask over its middle."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype="uint8"))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (size // 3, size // 3, 2 * size // 3, 2 * size // 3))
    return {"image": ("i.png", png_bytes(image)), "mask": ("m.png", png_bytes(mask))}


@pytest.fixture()
def small_redis():
    server = RedisServer().start()
    client = server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 8 * 1024 * 1024)
    yield server
    server.stop()


def test_a_full_redis_refuses_new_jobs_with_507_and_every_accepted_job_finishes(small_redis):
    redis = small_redis.client()
    api = ApiProcess(small_redis.url, REPAINT_MAX_QUEUE_LENGTH="1000")
    worker = None
    try:
        client = api.client()

        def submit(seed: int):
            r = client.post("/inpaint", files=noisy_upload(seed), data=QUICK)
            return r.status_code, r.json(), r.headers

        # Eight clients at once, until Redis is full: each answer is a 202 or a clear 507.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(submit, range(48)))
        codes = sorted({code for code, _, _ in answers})
        assert codes == [202, 507], codes
        accepted = [body["id"] for code, body, _ in answers if code == 202]
        refused = [(body, headers) for code, body, headers in answers if code == 507]
        assert 5 <= len(accepted) <= 40
        body, headers = refused[0]
        assert "full" in body["detail"] and "reserved for the results of accepted jobs" in body["detail"]
        assert int(headers["retry-after"]) > 0
        # Nothing of a refused job is left behind: every record belongs to an accepted job.
        records = {k.decode().split(":")[2] for k in redis.scan_iter(match="repaint:job:*") if k.count(b":") == 2}
        assert records == set(accepted)

        # A worker takes them all and stores every result: admission kept room for them.
        worker = WorkerProcess(small_redis.url, "w-full").wait_ready(redis)
        for job_id in accepted:
            job = wait_final(client, job_id, timeout=240)
            assert job["status"] == "succeeded", job
            result = client.get(f"/jobs/{job_id}/result")
            assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).size == (300, 300)
        assert int(redis.get(fairness.reserved_key())) == 0
        assert "redis refused" not in worker.output() and "paused" not in worker.output()

        # Results live their TTL; once they expire (here: deleted as expiry would), jobs are taken again.
        for job_id in accepted:
            redis.delete(jobs.result_key(job_id, 0))
        status, body, _ = submit(1000)
        assert status == 202, body
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
