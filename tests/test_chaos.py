"""Chaos, Jepsen-style: jobs through real workers while a driver kills and stops workers and
restarts and pauses Redis; then invariants over everything the clients saw.

Bounded in time and count; the seed is printed (set REPAINT_CHAOS_SEED to replay a run).
`pytest -m slow tests/test_chaos.py` runs the longer version.
"""

from __future__ import annotations

import io
import os
import random
import signal
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import face_and_mask, png_bytes
from tests.procs import ApiProcess, RedisServer, WorkerProcess, job_keys_without_ttl, submit, wait_until
from models.sampler_settings import RePaintSettings
from worker import jobs
from worker.ledger import Ledger, new_job_id
from worker.params import JobParams

FINAL = {"succeeded", "failed", "canceled"}
FAULTS = ("kill", "term", "restart_redis", "pause_redis")
JOB = {"steps": 100, "jump_length": 10, "jump_n_sample": 3}  # 280 evaluations per sample
TTL = 10


def submit_poison(redis) -> str:
    """A job no worker can run: its WebP result would be wider than WebP's 16383 pixels. The API
    refuses it at submit, so it is queued straight through the ledger, as an API of another
    version or with other limits could have queued it; the worker must fail it alone, at once."""
    image = Image.new("RGB", (16500, 64), (90, 120, 150))
    mask = Image.new("L", (16500, 64), 0)
    mask.paste(255, (20, 20, 40, 40))
    params = JobParams(seed=0, sampler=RePaintSettings(steps=20, jump_length=5, jump_n_sample=1), strategy="crop", output_format="webp",
                       image={"width": 16500, "height": 64, "mode": "RGB"})
    job_id, _ = Ledger(redis).create(job_id=new_job_id(), model="tiny", params=params, image=png_bytes(image),
                                     mask_png=png_bytes(mask), timeout=600, input_ttl=3600, max_attempts=3)
    return job_id


class History:
    """Every status each job was seen in, by a poller that never stops during the faults."""

    def __init__(self, url: str):
        self.url = url
        self.seen: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def watch(self, job_id: str) -> None:
        self.seen.setdefault(job_id, [])

    def start(self) -> "History":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=3) as client:
            while not self._stop.is_set():
                for job_id in list(self.seen):
                    try:
                        r = client.get(f"/jobs/{job_id}")
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 200:
                        self.seen[job_id].append(r.json()["status"])
                time.sleep(0.2)

    def all_final(self) -> bool:
        return all(s and s[-1] in FINAL for s in self.seen.values())


def run_chaos(n_jobs: int, n_faults: int, budget: float) -> None:
    """`n_faults` (at least one of each kind) 2 to 5 s apart among `n_jobs` jobs, then the
    invariants, all within `budget` seconds."""
    seed = int(os.environ.get("REPAINT_CHAOS_SEED", random.randrange(2**31)))
    print(f"chaos seed {seed} (replay with REPAINT_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    # Every kind once, in a seeded order, then the rest drawn at random.
    schedule = rng.sample(FAULTS, len(FAULTS)) + [rng.choice(FAULTS) for _ in range(n_faults - len(FAULTS))]
    server = RedisServer(appendonly=True).start()
    api = ApiProcess(server.url, REPAINT_MAX_ATTEMPTS="6")
    worker_env = {"REPAINT_HEARTBEAT_TTL": str(TTL), "REPAINT_SHUTDOWN_GRACE": "3"}
    workers: list[WorkerProcess] = []
    counter = [0]

    def new_worker() -> WorkerProcess:
        counter[0] += 1
        w = WorkerProcess(server.url, f"chaos{counter[0]}", **worker_env)
        workers.append(w)
        return w

    history = History(api.url).start()
    deadline = time.monotonic() + budget
    try:
        client = api.client()
        live = [new_worker().wait_ready(server.client()) for _ in range(2)]
        ids = [submit(client, *face_and_mask(seed=i), seed=i, **JOB) for i in range(n_jobs)]
        poison = submit_poison(server.client())
        for job_id in [*ids, poison]:
            history.watch(job_id)

        for fault in schedule:
            time.sleep(rng.uniform(2, 5))
            print(f"fault at {time.monotonic() - deadline + budget:.1f}s: {fault}")
            if fault in ("kill", "term"):
                victim = live.pop(rng.randrange(len(live)))
                victim.proc.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGTERM)
                live.append(new_worker())
            elif fault == "restart_redis":
                server.stop(signal.SIGTERM)
                time.sleep(rng.uniform(0.5, 3))
                server.start()
            else:  # longer than the heartbeat TTL: every lease lapses
                server.proc.send_signal(signal.SIGSTOP)
                time.sleep(TTL + 2)
                server.proc.send_signal(signal.SIGCONT)

        wait_until(history.all_final, max(10.0, deadline - time.monotonic()), "every job final", interval=0.5)
        history.stop()
        redis = server.client()

        # Every job ends in exactly one final status and never leaves it.
        for job_id, statuses in history.seen.items():
            first_final = next(i for i, s in enumerate(statuses) if s in FINAL)
            assert set(statuses[first_final:]) == {statuses[-1]}, (job_id, statuses)
        finals = {j: s[-1] for j, s in history.seen.items()}
        counted = sum(int(redis.hget(jobs.metrics_key("tiny"), f"jobs_{s}_total") or 0) for s in FINAL)
        assert counted == len(finals), "each job counted once in repaint_jobs_total"

        # The poison job fails after one attempt; its neighbours are not dragged down with it.
        job = client.get(f"/jobs/{poison}").json()
        assert job["status"] == "failed" and job["error"]["type"] == "invalid_input", job
        assert job["attempts"] == 1 and "webp" in job["error"]["message"]
        assert all(finals[j] == "succeeded" for j in ids), finals

        # Every succeeded job serves its result; nothing is left running, queued or key without TTL.
        for job_id in ids:
            r = client.get(f"/jobs/{job_id}/result")
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (32, 32)
        assert redis.scard(jobs.running_key()) == 0
        assert redis.llen(f"rq:queue:{jobs.queue_name('tiny')}") == 0
        assert job_keys_without_ttl(redis) == []
    except BaseException:
        for w in workers:
            print(f"---- worker {w.name} ----\n" + "\n".join(w.output().splitlines()[-40:]))
        raise
    finally:
        history.stop()
        for w in workers:
            w.stop(signal.SIGKILL)
        api.stop()
        server.stop()


def test_chaos_every_job_ends_once_and_nothing_is_lost():
    run_chaos(n_jobs=8, n_faults=len(FAULTS), budget=200)


@pytest.mark.slow
def test_chaos_long_every_job_ends_once_and_nothing_is_lost():
    run_chaos(n_jobs=30, n_faults=15, budget=900)
