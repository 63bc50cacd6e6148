"""Ctrl-C in folder mode, when a job has already succeeded and its result is on its way: the summary
tells what happened. The job is written and counted, not listed among the canceled (it was, with its
file kept, before: the service leaves a finished job as it is, and the batch counted the DELETE)."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time

import httpx

from tests.procs import wait_until
from tests.test_cli_batch import CHEAP, job_ids, make_folder, service, start_batch  # noqa: F401 - a fixture


class SlowResults:
    """A TCP relay in front of the API that holds each request for a result (`/result`) for
    `delay` seconds: a job that succeeded stays in flight, its result on its way, while a test acts."""

    def __init__(self, target: str, delay: float):
        host, port = target.removeprefix("http://").split(":")
        self.target, self.delay = (host, int(port)), delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held = threading.Event()  # a result request has arrived
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests and b"/result" in data:
                    self.held.set()
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_ctrl_c_while_a_succeeded_job_s_result_is_on_its_way_writes_and_counts_it(service, tmp_path):
    before = job_ids(service.redis)
    relay = SlowResults(service.url, delay=3.0)
    photos, masks = make_folder(tmp_path, names=("ann", "ben"))
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    proc = start_batch(log, "--images", str(photos), "--masks", str(masks), "-o", str(out), "--url", relay.url,
                       "--concurrency", "2", *CHEAP)
    try:
        wait_until(relay.held.is_set, 60, "a succeeded job's result request")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        relay.close()
    stderr = log.read_text()
    assert "Traceback" not in stderr, stderr
    summary = re.search(r"interrupted: (\d+) result\(s\) written; canceled (\d+) job\(s\) in flight(.*)", stderr)
    assert summary, stderr
    written, canceled = int(summary.group(1)), int(summary.group(2))
    files = sorted(p.name for p in out.iterdir())
    statuses = {i: httpx.get(f"{service.url}/jobs/{i}").json()["status"] for i in job_ids(service.redis) - before}
    # Exact: every file the run wrote is counted (the job whose result was held among them), and
    # every job it says it canceled was canceled. A job whose submission was still on its way at
    # Ctrl-C may succeed after it without being followed: it is neither written nor called canceled,
    # and a rerun makes it.
    assert written == len(files) >= 1, stderr
    assert canceled == sum(s == "canceled" for s in statuses.values()), (stderr, statuses)
    assert len(files) <= sum(s == "succeeded" for s in statuses.values()), (files, statuses)
    for name in files:
        assert name.removesuffix(".png") not in summary.group(3), stderr
