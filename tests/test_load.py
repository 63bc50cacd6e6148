"""A bounded load test on loopback: every submission is accepted and finished, or cleanly refused."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import face_and_mask, png_bytes
from tests.procs import ApiProcess, WorkerProcess, wait_until

SUBMISSIONS = 240
CLIENTS = 24


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_hundreds_of_concurrent_submissions_none_lost(redis_server, redis_db):
    api = ApiProcess(redis_server.url, REPAINT_MAX_QUEUE_LENGTH="40")
    worker = WorkerProcess(redis_server.url, "loaded", REPAINT_MAX_BATCH="16").wait_ready(redis_db)
    image, mask = face_and_mask()
    files = {"image": ("i.png", png_bytes(image)), "mask": ("m.png", png_bytes(mask))}
    fields = {"steps": "5", "jump_length": "5", "jump_n_sample": "1"}
    outcomes: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    try:
        with httpx.Client(base_url=api.url, timeout=60) as warm:
            for _ in range(20):
                warm.get("/healthz")
        rss_before = rss_kib(api.proc.pid)

        def client_run(n: int) -> None:
            with httpx.Client(base_url=api.url, timeout=60) as client:
                for _ in range(n):
                    r = client.post("/inpaint", files=files, data=fields)
                    assert r.status_code in (202, 429), r.text
                    if r.status_code == 429:
                        assert int(r.headers["retry-after"]) > 0
                    with lock:
                        outcomes.append((r.status_code, r.json().get("id")))

        with ThreadPoolExecutor(CLIENTS) as pool:
            for f in [pool.submit(client_run, SUBMISSIONS // CLIENTS) for _ in range(CLIENTS)]:
                f.result()
        accepted = [job_id for code, job_id in outcomes if code == 202]
        assert len(outcomes) == SUBMISSIONS and accepted
        print(f"accepted {len(accepted)}, refused {SUBMISSIONS - len(accepted)}")

        with httpx.Client(base_url=api.url, timeout=60) as client:
            def all_finished():
                statuses = [client.get(f"/jobs/{j}").json()["status"] for j in accepted]
                return all(s == "succeeded" for s in statuses)

            wait_until(all_finished, 300, "every accepted job to succeed", interval=1.0)
            text = client.get("/metrics").text
        assert f'repaint_jobs_total{{model="tiny",status="succeeded"}} {float(len(accepted))}' in text
        # The API holds no per-job state in memory: its footprint stays bounded.
        assert rss_kib(api.proc.pid) - rss_before < 80 * 1024
    finally:
        worker.stop()
        api.stop()
