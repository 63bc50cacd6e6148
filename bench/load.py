"""Load on one machine: real Redis, API and workers on loopback; many tenants, hundreds of SSE
streams, concurrent large uploads and a full Redis.

    python -m bench.load [--quick] [--phases a,b,c,d] [--out FILE] [--seed N]

Each phase starts its own processes (a and b share theirs): a redis-server with the settings
docker-compose.yml ships, the API as `python -m service.cli api`, workers of the `tiny` model as
`python -m worker.main` with one torch thread each. Each is bounded in time and count, prints as
it goes, and follows every accepted job to its end:

  a. fairness: tenant A queues many small jobs at once, then tenant B submits one; B's wait (its
     202 to `running` and to `succeeded`) and A's throughput, with B's job under its own key (the
     fair queue) and under A's key (where it queues behind A's jobs, as the FIFO queue did);
  b. SSE: N concurrent `GET /jobs/<id>/events` streams over a few jobs; Redis connected clients
     before, during and after; time to each stream's first event; `GET /jobs/<id>` latency;
  c. large uploads: K concurrent POSTs of a ~3 MB, 12-megapixel photographic JPEG under two
     REPAINT_PIXEL_BUDGET values; the API's peak RSS; Redis bytes per queued job;
  d. a full Redis: maxmemory small, submit until 507 (never a 5xx), then a worker finishes every
     accepted job.

Writes JSON to bench/results/load-<host>.json (`--quick`: load-<host>-quick.json) or `--out`,
and prints a Markdown summary. Everything is on one machine: clients, API, workers and Redis
share its cores, so latencies include that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import io
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from redis import Redis

from tests.procs import RedisServer, WorkerProcess, free_port, wait_until
from worker import fairness, jobs

ROOT = Path(__file__).resolve().parents[1]
FINAL = frozenset(s.value for s in jobs.JobStatus if s.final)
KEYS = {"tenant-a": "bench-key-a", "tenant-b": "bench-key-b"}
MIB = 1024 * 1024


# --- the machine and its processes -------------------------------------------------------------

def machine() -> dict:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and fields:
                break   # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name", platform.processor() or "unknown")
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']} model {fields.get('model', '?')}"
        cpu += f", {float(fields['cpu MHz']) / 1000:.2f} GHz)" if "cpu MHz" in fields else ")"
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = round(int(Path("/proc/meminfo").read_text().split()[1]) / MIB, 1)
    redis_version = subprocess.run([_redis_binary(), "--version"], capture_output=True,
                                   text=True).stdout.strip()
    return {"host": platform.node(), "arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": mem, "python": platform.python_version(), "redis": redis_version,
            "kernel": platform.release()}


def _redis_binary() -> str:
    from tests.procs import redis_server_binary

    return redis_server_binary()


def compose_redis_args() -> list[str]:
    """The redis-server arguments docker-compose.yml ships (its `command:` less the program)."""
    default = ["--appendonly", "yes", "--appendfsync", "everysec"]
    try:
        import yaml

        command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    except Exception:
        return default
    if isinstance(command, str):
        command = command.split()
    # ${VAR:-default} as compose interpolates it, from this environment.
    args = [re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: os.environ.get(m[1]) or (m[2] or ""), str(a))
            for a in command]
    return args[1:] if args and args[0].endswith("redis-server") else args


class ComposeRedis(RedisServer):
    """A private redis-server on loopback, configured as compose ships it."""

    def start(self) -> "ComposeRedis":
        self.proc = subprocess.Popen(
            [_redis_binary(), *compose_redis_args(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: Redis(port=self.port).ping(), 10, "redis-server")
        return self


class Api:
    """`python -m service.cli api` on a free loopback port, its output in a log file."""

    def __init__(self, redis_url: str, wait: bool = True, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="repaint-bench-api-", suffix=".log", delete=False)
        full = dict(os.environ)
        full.update(PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), full.get("PYTHONPATH", "")) if p),
                    PYTHONUNBUFFERED="1", REPAINT_REDIS_URL=redis_url, REPAINT_MODEL="tiny",
                    REPAINT_LOG_LEVEL="warning", REPAINT_API_KEYS=",".join(f"{n}:{k}" for n, k in KEYS.items()),
                    REPAINT_MAX_QUEUE_LENGTH="100000", REPAINT_TENANT_MAX_QUEUED="100000")
        full.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_up()

    def wait_up(self) -> "Api":
        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited:\n{self.output()}")
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200

        try:
            wait_until(up, 60, "the API")
        except TimeoutError:
            self.stop()
            raise
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def errors(self) -> list[str]:
        """Lines of its log that say something went wrong (tracebacks, ERROR)."""
        return [line for line in self.output().splitlines() if "Traceback" in line or "ERROR" in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stack:
    """One phase's processes; `close()` stops them all, Redis last."""

    def __init__(self, maxmemory: int | None = None):
        self.redis_server = ComposeRedis().start()
        self.redis = self.redis_server.client()
        self.redis.config_set("maxmemory-policy", "noeviction")
        if maxmemory is not None:
            self.redis.config_set("maxmemory", maxmemory)
        self.apis: list[Api] = []
        self.workers: list[WorkerProcess] = []

    @property
    def url(self) -> str:
        return self.redis_server.url

    def api(self, wait: bool = True, **env: str) -> Api:
        self.apis.append(Api(self.url, wait=wait, **env))
        return self.apis[-1]

    def worker(self, name: str, wait: bool = True, **env: str) -> WorkerProcess:
        env.setdefault("REPAINT_MAX_BATCH", "8")
        self.workers.append(WorkerProcess(self.url, name, **env))
        return self.workers[-1].wait_ready(self.redis, timeout=120) if wait else self.workers[-1]

    def api_and_worker(self, worker_name: str, **api_env: str) -> Api:
        """The API and a worker, started side by side (the worker loads torch meanwhile)."""
        worker = self.worker(worker_name, wait=False)
        api = self.api(**api_env)
        worker.wait_ready(self.redis, timeout=120)
        return api

    def close(self) -> list[str]:
        """Stops everything; the log lines of the API and workers that report an error."""
        errors = []
        for w in self.workers:
            w.stop()
            errors += [f"{w.name}: {line}" for line in w.output().splitlines()
                       if "Traceback" in line or "ERROR" in line or "paused" in line or "refused" in line]
            with contextlib.suppress(OSError):
                os.unlink(w.log.name)
        for a in self.apis:
            a.stop()
            errors += [f"api: {line}" for line in a.errors()]
            with contextlib.suppress(OSError):
                os.unlink(a.log.name)
        self.redis_server.stop()
        shutil.rmtree(self.redis_server.dir, ignore_errors=True)
        return errors


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak_rss(pid: int) -> bool:
    """Resets the process's VmHWM to its current RSS (Linux 4.0+, our own child)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """VmRSS every 10 ms in a thread: the sampled peak, beside the kernel's VmHWM."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --- uploads -----------------------------------------------------------------------------------

def synthetic_photo(width: int, height: int, seed: int = 0, grain: float = 4.0, texture: float = 22.0) -> Image.Image:
    """Photograph-like content: smooth colour fields at two scales, fine band-limited texture and
    sensor grain. At 4000x3000 it is about 3 MB as a quality-90 JPEG and 19 MB as a PNG."""
    rng = np.random.default_rng(seed)

    def field(h: int, w: int, channels: int, resample) -> np.ndarray:
        shape = (max(h, 2), max(w, 2), channels) if channels > 1 else (max(h, 2), max(w, 2))
        small = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        return np.asarray(small.resize((width, height), resample), np.float32)

    x = 0.7 * field(6, 8, 3, Image.BICUBIC) + 0.3 * field(height // 64 + 2, width // 64 + 2, 3, Image.BICUBIC)
    x += (field(height // 4, width // 4, 1, Image.BILINEAR)[..., None] - 128) * (texture / 128)
    x += rng.normal(0, grain, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt.lower() in ("jpeg", "jpg"):
        img.save(out, format="JPEG", quality=90)
    else:
        img.save(out, format="PNG")
    return out.getvalue()


def rect_mask(width: int, height: int) -> bytes:
    """A PNG mask whose middle ninth is white (to fill)."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 3, height // 3, 2 * width // 3, 2 * height // 3))
    return encoded(mask, "png")


def small_upload(seed: int = 0, size: int = 64) -> dict:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))
    return {"image": ("i.png", encoded(img, "png")), "mask": ("m.png", rect_mask(size, size))}


def photo_upload(width: int, height: int, fmt: str = "jpeg", seed: int = 0) -> dict:
    ext = "jpg" if fmt == "jpeg" else "png"
    return {"image": (f"photo.{ext}", encoded(synthetic_photo(width, height, seed), fmt)),
            "mask": ("mask.png", rect_mask(width, height))}


def sent_bytes(files: dict) -> int:
    return sum(len(content) for _, content in files.values())


# --- clients, outcomes and jobs ----------------------------------------------------------------

def auth(tenant: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


class Tally:
    """What clients were told: status codes, the accepted job ids; thread-safe."""

    def __init__(self):
        self.codes: Counter = Counter()
        self.accepted: list[str] = []
        self.bodies_5xx: list[str] = []   # 5xx other than 507 (the designed "Redis is full")
        self.refusal_507: str | None = None
        self.lock = threading.Lock()

    def post(self, client: httpx.Client, tenant: str, files: dict, data: dict) -> httpx.Response:
        r = client.post("/inpaint", files=files, data=data, headers=auth(tenant))
        with self.lock:
            self.codes[r.status_code] += 1
            if r.status_code == 202:
                self.accepted.append(r.json()["id"])
            elif r.status_code == 507:
                self.refusal_507 = self.refusal_507 or r.text[:400]
            elif r.status_code >= 500:
                self.bodies_5xx.append(f"{r.status_code} {r.text[:300]}")
        return r

    @property
    def http_5xx(self) -> int:
        """5xx answers other than 507 (the store is full, retry later: a designed refusal)."""
        return sum(n for code, n in self.codes.items() if code >= 500 and code != 507)


def record(redis: Redis, job_id: str) -> dict:
    return jobs.decode_record(redis.hgetall(jobs.job_key(job_id)))


def wait_all_final(redis: Redis, ids: list[str], timeout: float) -> dict:
    """Waits (bounded) until every job's record is final; counts the statuses, and the jobs that
    are not final (`not_final`) or whose record is gone (`lost`)."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    statuses: dict[str, str | None] = {}
    while True:
        pipe = redis.pipeline(transaction=False)
        for job_id in pending:
            pipe.hget(jobs.job_key(job_id), "status")
        for job_id, raw in zip(pending, pipe.execute()):
            statuses[job_id] = raw.decode() if raw else None
        pending = [j for j in pending if statuses[j] not in FINAL]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    counts = Counter(s for s in statuses.values() if s in FINAL)
    return {"jobs": len(ids), **{s: counts.get(s, 0) for s in sorted(FINAL)},
            "not_final": sum(1 for s in statuses.values() if s is not None and s not in FINAL),
            "lost": sum(1 for s in statuses.values() if s is None)}


def memory_usage(redis: Redis, key: str) -> int:
    return int(redis.memory_usage(key, samples=0) or 0)


def key_memory(redis: Redis, *keys: str) -> int:
    """Bytes Redis allocated for these keys (MEMORY USAGE: values at their allocator size class,
    key and encoding overhead); 0 for a key that does not exist."""
    return sum(int(redis.memory_usage(key, samples=0) or 0) for key in keys)


def queued_bytes(redis: Redis, job_id: str) -> dict:
    """Redis memory of a queued job: its inputs, its record, RQ's job hash and its events stream
    (MEMORY USAGE each), and the inputs' value bytes (what was sent, less the form's framing)."""
    inputs = [jobs.input_key(job_id, "image"), jobs.input_key(job_id, "mask")]
    out = {"inputs": key_memory(redis, *inputs), "record": key_memory(redis, jobs.job_key(job_id)),
           "rq_hash": key_memory(redis, f"rq:job:{job_id}"), "events": key_memory(redis, jobs.events_key(job_id)),
           "input_value_bytes": sum(int(redis.strlen(k)) for k in inputs)}
    out["total"] = out["inputs"] + out["record"] + out["rq_hash"] + out["events"]
    return out


def finished_bytes(redis: Redis, job_id: str, num_samples: int) -> dict:
    """Redis memory of a finished job: its results, record, RQ's job hash and events stream, and
    what is left of its inputs and preview (0: freed when it finished)."""
    results = [jobs.result_key(job_id, k) for k in range(num_samples)]
    out = {"results": key_memory(redis, *results), "record": key_memory(redis, jobs.job_key(job_id)),
           "rq_hash": key_memory(redis, f"rq:job:{job_id}"), "events": key_memory(redis, jobs.events_key(job_id)),
           "inputs_left": key_memory(redis, jobs.input_key(job_id, "image"), jobs.input_key(job_id, "mask")),
           "preview_left": key_memory(redis, jobs.preview_key(job_id)),
           "result_value_bytes": sum(int(redis.strlen(k)) for k in results)}
    out["total"] = sum(v for k, v in out.items() if k != "result_value_bytes")
    return out


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_summary(values: list[float]) -> dict:
    """Seconds -> milliseconds: count, p50, p99, max."""
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"count": len(values), "p50_ms": round(1000 * quantile(values, 0.5), 1),
            "p99_ms": round(1000 * quantile(values, 0.99), 1), "max_ms": round(1000 * max(values), 1)}


def say(phase: str, text: str) -> None:
    print(f"[{phase}] {text}", flush=True)


# --- a. many tenants and fairness ---------------------------------------------------------------

def phase_fairness(cfg: dict, shared: Stack | None = None) -> dict:
    """A queues `n` small jobs at once (8 clients), then B submits one: B's job under B's key (fair)
    and under A's key (FIFO: behind all of A's, as one FIFO queue would put it)."""
    n = cfg["a_jobs"]
    stack = shared or Stack()
    tally = Tally()
    out: dict = {"a_jobs": n, "job": cfg["job"], "max_batch": 8, "workers": 1, "clients": 8}
    try:
        api = stack.apis[0] if stack.apis else stack.api_and_worker("bench-a")
        files = small_upload(1)
        with httpx.Client(base_url=api.url, timeout=60) as client:
            tally.post(client, "tenant-a", files, cfg["job"])   # warm-up (imports, the worker's first pass)
            wait_all_final(stack.redis, list(tally.accepted), 60)
            for design, b_tenant in (("fair", "tenant-b"), ("fifo", "tenant-a")):
                before = len(tally.accepted)
                t0 = time.time()
                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    answers = list(pool.map(lambda _: tally.post(client, "tenant-a", files, cfg["job"]).status_code,
                                            range(n)))
                a_ids = tally.accepted[before:]
                submitted = time.time()
                r = tally.post(client, b_tenant, files, cfg["job"])
                told = time.time()
                if r.status_code != 202:
                    raise RuntimeError(f"B's job was refused: {r.status_code} {r.text}")
                b_id = r.json()["id"]
                position = client.get(f"/jobs/{b_id}", headers=auth(b_tenant)).json().get("position")
                ended = wait_all_final(stack.redis, a_ids + [b_id], cfg["wait_timeout"])
                # Times from the records (one clock: the API and the worker share the machine).
                b = record(stack.redis, b_id)
                a = [record(stack.redis, j) for j in a_ids]
                a_ran = [rec for rec in a if "started_at" in rec and "finished_at" in rec]
                b_started = b.get("started_at", float("inf"))
                row = {
                    "b_tenant": b_tenant, "a_accepted": len(a_ids), "a_refused": n - answers.count(202),
                    "a_submit_seconds": round(submitted - t0, 2),
                    # A's jobs not yet started when B's was created, and those of them that started before B's.
                    "a_waiting_at_b": sum(1 for rec in a if rec.get("started_at", float("inf")) > b["created_at"]),
                    "a_started_after_b_arrived_before_b": sum(
                        1 for rec in a if b["created_at"] < rec.get("started_at", float("inf")) < b_started),
                    "b_position_at_submit": position,
                    "b_wait_running_s": round(b["started_at"] - told, 3) if "started_at" in b else None,
                    "b_wait_succeeded_s": round(b["finished_at"] - told, 3) if "finished_at" in b else None,
                    "b_status": b.get("status"),
                    "a_throughput_jobs_per_s": round(len(a_ran) / (max(rec["finished_at"] for rec in a_ran)
                                                                   - min(rec["started_at"] for rec in a_ran)), 2)
                    if a_ran else None,
                    # One of A's jobs from start to end in the batch: the "batch turnover" B may wait.
                    "a_run_p50_s": round(statistics.median(rec["finished_at"] - rec["started_at"] for rec in a_ran), 3)
                    if a_ran else None,
                    "ended": ended,
                }
                out[design] = row
                say("a", f"{design}: B ({b_tenant}) waited {row['b_wait_running_s']} s to running, "
                         f"{row['b_wait_succeeded_s']} s to succeeded; {row['a_waiting_at_b']} of A's jobs were "
                         f"waiting, {row['a_started_after_b_arrived_before_b']} of them started before B; A ran "
                         f"{row['a_throughput_jobs_per_s']} jobs/s, each {row['a_run_p50_s']} s in the batch (p50)")
        out["ended"] = wait_all_final(stack.redis, tally.accepted, cfg["wait_timeout"])
    finally:
        out["log_errors"] = [] if shared else stack.close()
    out["codes"] = dict(tally.codes)
    out["http_5xx"] = tally.http_5xx
    out["bodies_5xx"] = tally.bodies_5xx[:5]
    return out


# --- b. hundreds of SSE streams -----------------------------------------------------------------

def parse_event_id(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("-"))


async def follow(client: httpx.AsyncClient, job_id: str, tenant: str, opened: list) -> dict:
    """One SSE stream to its end: time to the first event, the final status, whether ids rose."""
    t0 = time.perf_counter()
    first = None
    last_id: tuple | None = None
    monotonic, events, final, event = True, 0, None, None
    try:
        async with client.stream("GET", f"/jobs/{job_id}/events", headers=auth(tenant)) as resp:
            if resp.status_code != 200:
                return {"code": resp.status_code, "first_s": None, "final": None, "events": 0, "monotonic": True}
            opened[0] += 1
            opened[1] = max(opened[1], opened[0])
            try:
                async for line in resp.aiter_lines():
                    if line.startswith("id:"):
                        this = parse_event_id(line[3:].strip())
                        monotonic &= last_id is None or this > last_id
                        last_id = this
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                        events += 1
                        if first is None:
                            first = time.perf_counter() - t0
                    elif line.startswith("data:") and event == "status":
                        status = json.loads(line[5:]).get("status")
                        if status in FINAL:
                            final = status
            finally:
                opened[0] -= 1
            return {"code": 200, "first_s": first, "final": final, "events": events, "monotonic": monotonic}
    except (httpx.HTTPError, OSError) as exc:
        return {"code": None, "error": f"{type(exc).__name__}: {exc}", "first_s": first, "final": final,
                "events": events, "monotonic": monotonic}


def redis_clients(redis: Redis) -> dict:
    clients = redis.client_list()
    return {"connected": len(clients),
            "pubsub": sum(1 for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0)}


def phase_streams(cfg: dict, shared: Stack | None = None) -> dict:
    n_streams, n_jobs = cfg["b_streams"], cfg["b_jobs"]
    fields = cfg["b_job"]
    stack = shared or Stack()
    tally = Tally()
    out: dict = {"streams": n_streams, "jobs": n_jobs, "job": fields}
    streams: list[dict] = []
    try:
        api = stack.apis[0] if stack.apis else stack.api_and_worker("bench-b")
        with httpx.Client(base_url=api.url, timeout=60) as client:
            files = small_upload(2)
            tally.post(client, "tenant-a", files, cfg["job"])   # warm-up
            wait_all_final(stack.redis, list(tally.accepted), 60)
            warm_id = tally.accepted[0]
            idle = []
            for _ in range(cfg["b_gets"]):
                t0 = time.perf_counter()
                client.get(f"/jobs/{warm_id}", headers=auth("tenant-a"))
                idle.append(time.perf_counter() - t0)
            out["get_job_idle"] = latency_summary(idle)
            out["redis_clients_before"] = redis_clients(stack.redis)
            say("b", f"before: {out['redis_clients_before']}; GET /jobs/<id> idle {out['get_job_idle']}")
            ids = []
            for i in range(n_jobs):
                r = tally.post(client, "tenant-a", small_upload(10 + i), fields)
                if r.status_code == 202:
                    ids.append(r.json()["id"])

            stop = threading.Event()
            during: list[dict] = []
            loaded: list[float] = []
            get_codes: Counter = Counter()

            def watch_redis():
                while not stop.is_set():
                    with contextlib.suppress(Exception):
                        during.append(redis_clients(stack.redis))
                    stop.wait(0.2)

            def poll_jobs():
                # A sequential client reading job records while the streams run.
                with httpx.Client(base_url=api.url, timeout=60) as poller:
                    rng = random.Random(cfg["seed"])
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        r = poller.get(f"/jobs/{rng.choice(ids)}", headers=auth("tenant-a"))
                        loaded.append(time.perf_counter() - t0)
                        get_codes[r.status_code] += 1
                        stop.wait(0.02)

            async def all_streams():
                limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
                timeout = httpx.Timeout(connect=60, read=120, write=60, pool=None)
                opened = [0, 0]
                async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=timeout) as ac:
                    results = await asyncio.wait_for(
                        asyncio.gather(*(follow(ac, ids[i % len(ids)], "tenant-a", opened)
                                         for i in range(n_streams))), cfg["wait_timeout"])
                return results, opened[1]

            threads = [threading.Thread(target=watch_redis), threading.Thread(target=poll_jobs)]
            for t in threads:
                t.start()
            t0 = time.perf_counter()
            try:
                streams, most_open = asyncio.run(all_streams())
            finally:
                stop.set()
                for t in threads:
                    t.join()
            out["streams_seconds"] = round(time.perf_counter() - t0, 2)
            time.sleep(1.0)
            out["redis_clients_after"] = redis_clients(stack.redis)
        firsts = [s["first_s"] for s in streams if s["first_s"] is not None]
        out.update({
            "streams_open_at_once": most_open,
            "stream_codes": dict(Counter(str(s["code"]) for s in streams)),
            "stream_errors": sorted({s["error"] for s in streams if s.get("error")})[:5],
            "streams_ended_final": sum(1 for s in streams if s["final"] in FINAL),
            "streams_ids_monotonic": all(s["monotonic"] for s in streams),
            "events_received": sum(s["events"] for s in streams),
            "first_event": latency_summary(firsts),
            "get_job_under_streams": latency_summary(loaded),
            "get_job_codes": dict(get_codes),
            "redis_clients_during_max": {k: max((d[k] for d in during), default=None) for k in ("connected", "pubsub")},
        })
        say("b", f"{most_open} streams open at once; Redis clients before {out['redis_clients_before']}, during "
                 f"(max) {out['redis_clients_during_max']}, after {out['redis_clients_after']}; first event "
                 f"{out['first_event']}; GET /jobs/<id> under load {out['get_job_under_streams']}; "
                 f"{out['streams_ended_final']} of {n_streams} streams saw the final status")
        out["ended"] = wait_all_final(stack.redis, tally.accepted, cfg["wait_timeout"])
    finally:
        out["log_errors"] = [] if shared else stack.close()
    out["codes"] = dict(tally.codes)
    out["http_5xx"] = tally.http_5xx + sum(1 for s in streams if s["code"] and s["code"] >= 500)
    out["bodies_5xx"] = tally.bodies_5xx[:5]
    return out


# --- c. concurrent large uploads ----------------------------------------------------------------

def budget_env(budget: int) -> dict:
    """An API's environment for REPAINT_PIXEL_BUDGET=budget: the largest image must fit it twice
    (image and mask; the API checks), and requests wait long enough that none is refused."""
    return {"REPAINT_PIXEL_BUDGET": str(budget), "REPAINT_MAX_IMAGE_PIXELS": str(min(40_000_000, budget // 2)),
            "REPAINT_PIXEL_BUDGET_WAIT": "120"}


def upload_peak(api: Api, files: dict, k: int, data: dict, tally: Tally) -> dict:
    """`k` concurrent POSTs of `files` to a fresh API: its RSS before and at its peak; stops the API."""
    try:
        with httpx.Client(base_url=api.url, timeout=180) as client:
            tally.post(client, "tenant-a", small_upload(3), data)  # warm-up: imports, a first decode
            base = status_kib(api.proc.pid, "VmRSS")
            hwm_reset = reset_peak_rss(api.proc.pid)
            before = len(tally.accepted)
            t0 = time.perf_counter()
            with RssSampler(api.proc.pid) as sampler, concurrent.futures.ThreadPoolExecutor(k) as pool:
                codes = list(pool.map(lambda _: tally.post(client, "tenant-a", files, data).status_code, range(k)))
            elapsed = time.perf_counter() - t0
            hwm = status_kib(api.proc.pid, "VmHWM")
        peak = hwm if hwm_reset else sampler.peak
        return {"uploads": k, "codes": dict(Counter(codes)),
                "seconds": round(elapsed, 2), "rss_before_mib": round(base / 1024, 1),
                "peak_rss_mib": round(peak / 1024, 1), "peak_over_base_mib": round((peak - base) / 1024, 1),
                "peak_source": "VmHWM" if hwm_reset else "VmRSS sampled every 10 ms",
                "ids": tally.accepted[before:]}
    finally:
        api.stop()


def phase_uploads(cfg: dict, shared: None = None) -> dict:
    width, height = cfg["c_size"]
    k = cfg["c_uploads"]
    files = photo_upload(width, height, "jpeg", cfg["seed"])
    data = {**cfg["job"], "output_format": "jpeg"}
    stack = Stack()
    tally = Tally()
    out: dict = {"image": f"{width}x{height} JPEG q90", "image_bytes": len(files["image"][1]),
                 "mask_bytes": len(files["mask"][1]), "uploads": k, "output_format": "jpeg", "runs": []}
    say("c", f"{width}x{height} photographic JPEG: {len(files['image'][1]) / 1e6:.2f} MB; {k} concurrent uploads")
    try:
        # Every budget's API starts at once (each is measured alone, the others idle).
        apis = [stack.api(wait=False, **budget_env(budget)) for budget in cfg["c_budgets"]]
        for api in apis:
            api.wait_up()
        for budget, api in zip(cfg["c_budgets"], apis):
            run = {"budget_pixels": budget, "max_image_pixels": int(budget_env(budget)["REPAINT_MAX_IMAGE_PIXELS"]),
                   **upload_peak(api, files, k, data, tally)}
            per_job = [queued_bytes(stack.redis, j) for j in run.pop("ids")]
            run["redis_bytes_per_queued_job"] = round(statistics.mean(b["total"] for b in per_job)) if per_job else None
            run["redis_bytes_over_sent"] = (round(run["redis_bytes_per_queued_job"] / sent_bytes(files), 3)
                                            if per_job else None)
            run["redis_breakdown"] = per_job[0] if per_job else None
            run["redis_bytes_sent_per_queued_job"] = sent_bytes(files)
            out["runs"].append(run)
            say("c", f"budget {budget / 1e6:.0f} MP: {run['codes']} in {run['seconds']} s; API RSS "
                     f"{run['rss_before_mib']} -> peak {run['peak_rss_mib']} MiB; Redis "
                     f"{run['redis_bytes_per_queued_job']} bytes per queued job ({run['redis_bytes_over_sent']}x sent)")
        out["bytes_sent_per_job"] = sent_bytes(files)
        # Workers take the large jobs: each is decoded by a worker, filled and encoded at full size.
        t0 = time.perf_counter()
        for i in range(cfg["c_workers"]):
            stack.worker(f"bench-c{i}", wait=False)
        for w in stack.workers:
            w.wait_ready(stack.redis, timeout=120)
        out["ended"] = wait_all_final(stack.redis, tally.accepted, 2 * cfg["wait_timeout"])
        out["drain_seconds"] = round(time.perf_counter() - t0, 1)
        out["drain_workers"] = cfg["c_workers"]
        say("c", f"{cfg['c_workers']} worker(s) finished them in {out['drain_seconds']} s: {out['ended']}")
    finally:
        out["log_errors"] = stack.close()
    out["codes"] = dict(tally.codes)
    out["http_5xx"] = tally.http_5xx
    out["bodies_5xx"] = tally.bodies_5xx[:5]
    return out


# --- d. a full Redis ------------------------------------------------------------------------------

def phase_full_redis(cfg: dict, shared: None = None) -> dict:
    maxmemory = cfg["d_maxmemory"]
    width, height = cfg["d_size"]
    files = photo_upload(width, height, "jpeg", cfg["seed"] + 1)
    data = {**cfg["job"], "output_format": "png"}
    stack = Stack(maxmemory=maxmemory)
    tally = Tally()
    out: dict = {"maxmemory": maxmemory, "image": f"{width}x{height} JPEG q90", "bytes_sent_per_job": sent_bytes(files),
                 "output_format": "png", "clients": 4}
    try:
        api = stack.api()
        out["used_memory_start"] = int(stack.redis.info("memory")["used_memory"])
        refused_after = cfg["d_refusals"]
        stop = threading.Event()
        t0 = time.perf_counter()

        def client_loop():
            with httpx.Client(base_url=api.url, timeout=60) as client:
                while not stop.is_set():
                    with tally.lock:
                        if sum(tally.codes.values()) >= cfg["d_max_submissions"]:
                            return
                    code = tally.post(client, "tenant-a", files, data).status_code
                    if tally.codes[507] >= refused_after or code >= 500 and code != 507:
                        stop.set()

        threads = [threading.Thread(target=client_loop) for _ in range(out["clients"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["submit_seconds"] = round(time.perf_counter() - t0, 2)
        memory = stack.redis.info("memory")
        out["used_memory_full"] = int(memory["used_memory"])
        out["accepted"], out["refused_507"] = len(tally.accepted), tally.codes[507]
        out["reserved_bytes_full"] = int(stack.redis.get(fairness.reserved_key()) or 0)
        say("d", f"maxmemory {maxmemory / MIB:.0f} MiB: {dict(tally.codes)}; Redis used "
                 f"{out['used_memory_full'] / MIB:.1f} MiB, {out['reserved_bytes_full'] / MIB:.1f} MiB reserved")
        t0 = time.perf_counter()
        stack.worker("bench-d")
        out["ended"] = wait_all_final(stack.redis, tally.accepted, cfg["wait_timeout"])
        out["drain_seconds"] = round(time.perf_counter() - t0, 1)
        out["used_memory_after"] = int(stack.redis.info("memory")["used_memory"])
        out["reserved_bytes_after"] = int(stack.redis.get(fairness.reserved_key()) or 0)
        say("d", f"a worker (started then) finished the accepted jobs in {out['drain_seconds']} s: {out['ended']}")
    finally:
        out["log_errors"] = stack.close()
    out["codes"] = dict(tally.codes)
    out["http_5xx"] = tally.http_5xx
    out["bodies_5xx"] = tally.bodies_5xx[:5]
    out["refusal_507"] = tally.refusal_507
    return out


# --- the report ------------------------------------------------------------------------------------

PHASES = {"a": phase_fairness, "b": phase_streams, "c": phase_uploads, "d": phase_full_redis}
NAMES = {"a": "fairness", "b": "streams", "c": "uploads", "d": "full_redis"}


def config(quick: bool, seed: int) -> dict:
    if quick:
        return {"seed": seed, "wait_timeout": 120,
                "job": {"steps": "5", "jump_length": "5", "jump_n_sample": "1"}, "a_jobs": 12,
                "b_job": {"steps": "10", "jump_length": "5", "jump_n_sample": "1"}, "b_streams": 40, "b_jobs": 4,
                "b_gets": 50,
                "c_size": (640, 480), "c_uploads": 2, "c_budgets": [100_000_000, 30_000_000], "c_workers": 1,
                "d_maxmemory": 6 * MIB, "d_size": (512, 512), "d_refusals": 4, "d_max_submissions": 100}
    # Small jobs: 10 network evaluations per sample (5 steps, then 5 re-noised and sampled again).
    return {"seed": seed, "wait_timeout": 600,
            "job": {"steps": "10", "jump_length": "5", "jump_n_sample": "1"}, "a_jobs": 200,
            "b_job": {"steps": "25", "jump_length": "5", "jump_n_sample": "2"}, "b_streams": 300, "b_jobs": 30,
            "b_gets": 200,
            "c_size": (4000, 3000), "c_uploads": 10, "c_budgets": [100_000_000, 30_000_000], "c_workers": 2,
            "d_maxmemory": 64 * MIB, "d_size": (1024, 768), "d_refusals": 20, "d_max_submissions": 600}


def summary(report: dict) -> dict:
    ph = report["phases"]
    ended = [p["ended"] for p in ph.values() if "ended" in p]
    s = {"jobs_accepted": sum(e["jobs"] for e in ended),
         "jobs_not_final": sum(e["not_final"] + e["lost"] for e in ended),
         "jobs_failed": sum(e["failed"] for e in ended),
         "http_5xx": sum(p.get("http_5xx", 0) for p in ph.values())}
    if "a" in ph:
        s["second_tenant_wait_running_s"] = {d: ph["a"][d]["b_wait_running_s"] for d in ("fair", "fifo")}
        s["second_tenant_wait_succeeded_s"] = {d: ph["a"][d]["b_wait_succeeded_s"] for d in ("fair", "fifo")}
    if "b" in ph:
        b = ph["b"]
        s["redis_clients"] = {"before": b["redis_clients_before"]["connected"],
                              "during_max": b["redis_clients_during_max"]["connected"],
                              "after": b["redis_clients_after"]["connected"], "streams": b["streams_open_at_once"]}
        s["first_event"] = b["first_event"]
        s["get_job"] = {"idle": b["get_job_idle"], "under_streams": b["get_job_under_streams"]}
    if "c" in ph:
        s["api_peak_rss_mib"] = {str(r["budget_pixels"]): r["peak_rss_mib"] for r in ph["c"]["runs"]}
        s["redis_bytes_per_queued_job"] = ph["c"]["runs"][0]["redis_bytes_per_queued_job"]
        s["bytes_sent_per_job"] = ph["c"]["bytes_sent_per_job"]
    if "d" in ph:
        s["full_redis"] = {k: ph["d"][k] for k in ("accepted", "refused_507", "http_5xx", "drain_seconds")}
    return s


def markdown(report: dict) -> str:
    s, ph = report["summary"], report["phases"]
    m = report["machine"]
    rows = []
    if "a" in ph:
        a = ph["a"]
        for d, label in (("fair", "fair queue (B under its own key)"), ("fifo", "FIFO (B under A's key)")):
            r = a[d]
            rows.append((f"second tenant's wait, {label}",
                         f"{r['b_wait_running_s']} s to running, {r['b_wait_succeeded_s']} s to succeeded "
                         f"({r['a_waiting_at_b']} of A's {r['a_accepted']} jobs waiting, "
                         f"{r['a_started_after_b_arrived_before_b']} of them started first; one A job runs "
                         f"{r['a_run_p50_s']} s; A: {r['a_throughput_jobs_per_s']} jobs/s)"))
    if "b" in ph:
        b = ph["b"]
        before, during, after = (b[f"redis_clients_{k}"] for k in ("before", "during_max", "after"))
        rows.append(("Redis connected clients (SSE)",
                     f"{before['connected']} before, {during['connected']} during {b['streams_open_at_once']} open "
                     f"streams on {b['jobs']} jobs ({during['pubsub']} pub/sub), {after['connected']} after"))
        rows.append(("first SSE event p50 / p99", f"{b['first_event']['p50_ms']} / {b['first_event']['p99_ms']} ms"))
        idle, loaded = b["get_job_idle"], b["get_job_under_streams"]
        rows.append(("GET /jobs/<id> p50 / p99", f"{idle['p50_ms']} / {idle['p99_ms']} ms idle; "
                     f"{loaded['p50_ms']} / {loaded['p99_ms']} ms under the streams"))
        rows.append(("SSE streams that saw the final status",
                     f"{b['streams_ended_final']} of {b['streams']} (ids rising: {b['streams_ids_monotonic']})"))
    if "c" in ph:
        c = ph["c"]
        for r in c["runs"]:
            rows.append((f"API peak RSS, {r['uploads']} concurrent {c['image']} uploads, "
                         f"REPAINT_PIXEL_BUDGET={r['budget_pixels'] / 1e6:.0f} MP",
                         f"{r['peak_rss_mib']} MiB ({r['rss_before_mib']} MiB before; {r['seconds']} s; {r['codes']})"))
        r = c["runs"][0]
        rows.append(("Redis bytes per queued job (inputs + record + RQ hash + events)",
                     f"{r['redis_bytes_per_queued_job']:,} for {c['bytes_sent_per_job']:,} bytes sent "
                     f"({r['redis_bytes_over_sent']}x)"))
    if "d" in ph:
        d = ph["d"]
        rows.append((f"full Redis (maxmemory {d['maxmemory'] / MIB:.0f} MiB, {d['image']})",
                     f"{d['accepted']} accepted (202), {d['refused_507']} refused (507), {d['http_5xx']} other 5xx; "
                     f"the accepted finished in {d['drain_seconds']} s after a worker started"))
    rows.append(("accepted jobs / not final (or lost) / failed",
                 f"{s['jobs_accepted']} / {s['jobs_not_final']} / {s['jobs_failed']}"))
    rows.append(("5xx answers other than 507", str(s["http_5xx"])))
    head = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['redis']}; "
            f"{'--quick' if report['quick'] else 'full run'}, {report['wall_seconds']} s.")
    return "\n".join([head, "", "| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small counts (about a minute), as the CI smoke test runs it")
    parser.add_argument("--phases", default="a,b,c,d", help="comma-separated among a (fairness), b (SSE streams), "
                        "c (large uploads), d (full Redis)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: bench/results/load-<host>.json)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}: choose among {sorted(PHASES)}")
    cfg = config(args.quick, args.seed)
    out = args.out or ROOT / "bench" / "results" / f"load-{platform.node()}{'-quick' if args.quick else ''}.json"
    report: dict = {"machine": machine(), "quick": args.quick, "seed": args.seed,
                    "redis_args": compose_redis_args(), "config": {k: v for k, v in cfg.items()}, "phases": {}}
    print(f"bench.load: {report['machine']['cpu']}, {report['machine']['cores']} cores; phases {','.join(phases)}; "
          f"seed {args.seed}", flush=True)
    t0 = time.perf_counter()
    # a and b share one Redis, API and worker (one start less); c and d need their own.
    shared = None
    if {"a", "b"} <= set(phases):
        shared = Stack()
        shared.api_and_worker("bench-ab")
    try:
        for p in phases:
            t = time.perf_counter()
            report["phases"][p] = PHASES[p](cfg, shared if p in "ab" else None)
            report["phases"][p].update(phase=NAMES[p], seconds=round(time.perf_counter() - t, 1))
            say(p, f"{NAMES[p]}: {report['phases'][p]['seconds']} s")
            if shared is not None and p == max(set(phases) & {"a", "b"}):
                report["phases"][p]["log_errors"] = shared.close()
                shared = None
    finally:
        if shared is not None:
            shared.close()
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["summary"] = summary(report)
    text = markdown(report)
    report["markdown"] = text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(text)
    print(f"wrote {out}", flush=True)
    return report


if __name__ == "__main__":
    main()
