"""`repaint serve`, the README's first command, as a user runs it: embedded Redis (on a unix
socket), one worker and the API in one command; a job goes from upload to result over its event
stream, and SIGTERM stops all three."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from service.client import RepaintClient
from tests.conftest import face_and_mask, png_bytes
from tests.procs import ROOT, free_port, wait_until


def test_repaint_serve_runs_a_job_from_upload_to_result_over_its_event_stream(tmp_path):
    """...and the tools started beside it find its embedded Redis and its API through its run file."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPAINT_")}
    run_file = tmp_path / "serve.json"
    env.update(REPAINT_MODEL="tiny", REPAINT_TORCH_THREADS="1", REPAINT_LOG_LEVEL="WARNING",
               REPAINT_RUN_FILE=str(run_file))
    tools_env = {k: v for k, v in env.items() if k != "REPAINT_MODEL"}  # as a user's other terminal
    log = tempfile.NamedTemporaryFile(prefix="repaint-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        return Path(log.name).read_text(errors="replace")

    def ready() -> bool:
        assert proc.poll() is None, f"repaint serve exited:\n{output()}"
        try:
            body = httpx.get(f"{url}/readyz", timeout=2).json()
        except httpx.HTTPError:
            return False
        return body.get("workers", 0) >= 1

    try:
        wait_until(ready, 120, "repaint serve with a live worker", interval=0.5)
        image, mask = (png_bytes(x) for x in face_and_mask(size=32, seed=0))
        with RepaintClient(url, timeout=30) as client:
            job = client.submit(image, mask, steps=5, jump_length=5, jump_n_sample=1, seed=0)
            events = list(client.events(job["id"]))  # the event stream itself, no polling fallback
            assert events, output()
            kind, data = events[-1]
            assert (kind, data["status"]) == ("status", "succeeded"), f"{events}\n{output()}"
            assert client.result(job["id"]).startswith(b"\x89PNG")
        assert "Traceback" not in output(), output()

        # No flags, no REPAINT_REDIS_URL: the health check reaches the embedded Redis and says so.
        health = subprocess.run([sys.executable, "-m", "worker.health"], cwd=ROOT, env=tools_env,
                                capture_output=True, text=True, timeout=60)
        assert health.returncode == 0 and health.stdout.startswith("healthy"), health.stdout + health.stderr
        assert "unix://" in health.stderr and "the embedded Redis of repaint serve" in health.stderr, health.stderr
        # And `repaint submit` finds the API on its port (not the default 8000).
        image_path, mask_path = tmp_path / "image.png", tmp_path / "mask.png"
        image_path.write_bytes(image)
        mask_path.write_bytes(mask)
        submitted = subprocess.run([sys.executable, "-m", "service.cli", "submit", str(image_path), str(mask_path),
                                    "-o", str(tmp_path / "out.png"), "--steps", "5", "--jump-length", "5",
                                    "--jump-n-sample", "1"], cwd=ROOT, env=tools_env, capture_output=True, text=True,
                                   timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        os.unlink(log.name)
    assert code == 0
    assert not run_file.exists()  # removed on the way out: tools no longer find a service that stopped


def test_a_port_in_use_is_one_line_naming_the_setting_and_exit_code_2():
    """Before anything starts (no embedded Redis, no worker): the user learns which setting to change."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPAINT_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in ("serve", "api"):
            done = subprocess.run([sys.executable, "-m", "service.cli", command, "--port", str(port)], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and f"port {port} on 127.0.0.1 is in use" in lines[0], done.stderr
            assert "REPAINT_PORT" in lines[0] and "--port" in lines[0]
            assert "embedded Redis" not in done.stderr
