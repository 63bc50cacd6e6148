"""Live progress, the CLI, webhooks and the web page, against real processes."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from PIL import Image

from service.client import RepaintClient
from worker.blending import band_weights
from tests.conftest import face_and_mask, png_bytes
from tests.procs import ROOT, ApiProcess, WorkerProcess, free_port, submit, wait_final, wait_until

SECRET = "a-shared-webhook-secret"
RECEIVER_PORT = free_port()  # listed exactly: loopback is refused unless host and port are listed
WEBHOOKS = {"REPAINT_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{RECEIVER_PORT},*", "REPAINT_WEBHOOK_SECRET": SECRET}
LIVE = {"steps": 100, "jump_length": 10, "jump_n_sample": 5}  # 460 evaluations


@pytest.fixture()
def service(redis_server, redis_db):
    api = ApiProcess(redis_server.url, **WEBHOOKS)
    worker = WorkerProcess(redis_server.url, "live", REPAINT_PREVIEW_INTERVAL="0.3", **WEBHOOKS).wait_ready(redis_db)
    yield api
    worker.stop()
    api.stop()


@pytest.fixture(scope="module")
def api_alone(redis_server):
    """The API with no worker, for what it answers by itself: its jobs stay queued."""
    api = ApiProcess(redis_server.url, **WEBHOOKS)
    yield api
    api.stop()


def test_events_stream_in_order_with_previews(service):
    client = RepaintClient(service.url)
    job_id = client.submit(png_bytes(face_and_mask()[0]), png_bytes(face_and_mask()[1]), **LIVE)["id"]
    events, fetched = [], []
    for event in client.events(job_id):
        events.append(event)
        if event[0] == "preview" and not fetched:  # while the job runs: a final job has no preview
            fetched.append(client.http.get(event[1]["url"]))
    kinds = [e for e, _ in events]
    assert kinds[0] == "status" and events[-1] == ("status", {**events[-1][1], "status": "succeeded"})
    steps = [d["step"] for e, d in events if e == "progress"]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] == 460
    statuses = [d["status"] for e, d in events if e == "status"]
    assert statuses.index("running") < statuses.index("succeeded")
    previews = [d for e, d in events if e == "preview"]
    assert previews, kinds
    assert all(3 * p["step"] >= 460 for p in previews)  # none while the estimate is mostly noise
    preview = fetched[0]
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == (32, 32)
    # Freed with the inputs once the job is final (its results replace it).
    assert client.http.get(previews[-1]["url"]).status_code == 404
    # A finished job's stream is its final state at once.
    assert [e for e, _ in client.events(job_id)] == ["status", "progress"]


def test_preview_is_404_before_any_exists(api_alone, redis_db):
    client = RepaintClient(api_alone.url)
    job_id = client.submit(png_bytes(face_and_mask()[0]), png_bytes(face_and_mask()[1]), steps=5,
                           jump_length=5, jump_n_sample=1, model="tiny")["id"]
    assert client.job(job_id)["status"] == "queued"  # no worker: no estimate, no preview
    r = client.http.get(f"/jobs/{job_id}/preview")
    assert r.status_code == 404, r.text
    assert client.http.get("/jobs/00000000-0000-4000-8000-000000000000/preview").status_code == 404


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "service.cli", "submit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_submits_shows_progress_and_writes_the_result(service, tmp_path):
    image, mask = face_and_mask(seed=8)
    (tmp_path / "i.png").write_bytes(png_bytes(image))
    (tmp_path / "m.png").write_bytes(png_bytes(mask))
    done = run_cli(str(tmp_path / "i.png"), str(tmp_path / "m.png"), "-o", str(tmp_path / "out.png"), "--url",
                   service.url, "--steps", "60", "--jump-length", "5", "--jump-n-sample", "3", "--num-samples", "2")
    assert done.returncode == 0, done.stderr
    assert "/" in done.stderr and "wrote" in done.stderr  # a progress bar and the files
    for name in ("out-1.png", "out-2.png"):
        out = np.asarray(Image.open(tmp_path / name))
        known = band_weights(np.asarray(mask) >= 128, 2) == 0  # beyond the default 2 px band
        assert out.shape == (32, 32, 3) and (out[known] == np.asarray(image)[known]).all()
    refused = run_cli(str(tmp_path / "i.png"), str(tmp_path / "m.png"), "-o", str(tmp_path / "x.png"),
                      "--url", service.url, "--model", "nope")
    assert refused.returncode == 2 and "unknown model" in refused.stderr
    unreachable = run_cli(str(tmp_path / "i.png"), "-o", str(tmp_path / "x.png"), "--url",
                          f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3


class Receiver(BaseHTTPRequestHandler):
    calls: list = []
    fail_first_completed = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        event = json.loads(body)
        Receiver.calls.append((time.monotonic(), dict(self.headers), body, event))
        if event["event"] == "completed" and Receiver.fail_first_completed:
            Receiver.fail_first_completed = False
            self.send_response(503)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhooks_are_signed_throttled_retried_and_recorded_on_the_job(service):
    server = ThreadingHTTPServer(("127.0.0.1", RECEIVER_PORT), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RepaintClient(service.url)
        image, mask = (png_bytes(x) for x in face_and_mask())
        url = f"http://127.0.0.1:{RECEIVER_PORT}/hook"
        job_id = client.submit(image, mask, webhook=url, **LIVE)["id"]
        assert client.wait(job_id)["status"] == "succeeded"
        deadline = time.time() + 20
        while time.time() < deadline and sum(e["event"] == "completed" for *_, e in Receiver.calls) < 2:
            time.sleep(0.2)
        events = [e["event"] for *_, e in Receiver.calls]
        assert events[0] == "started" and events.count("completed") == 2  # the 503 was retried
        progress_times = [t for t, _, _, e in Receiver.calls if e["event"] == "progress"]
        # Throttled when sent (0.5 s apart); arrival times jitter a little with delivery.
        assert progress_times and len(progress_times) <= (progress_times[-1] - progress_times[0]) / 0.5 + 2
        assert all(b - a >= 0.3 for a, b in zip(progress_times, progress_times[1:]))
        for _, headers, body, event in Receiver.calls:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Repaint-Signature"] == expected and event["job_id"] == job_id
        # The delivery's state is on the job, written by the worker through the ledger.
        webhook = wait_until(lambda: (w := client.http.get(f"/jobs/{job_id}").json()["webhook"])
                             and w["state"] == "delivered" and w, 10, "the delivered state")
        delivery_id = next(e["delivery_id"] for _, _, _, e in Receiver.calls if e["event"] == "completed")
        assert webhook | {"at": 0} == {"event": "completed", "state": "delivered", "last_status": 204,
                                       "attempts": 2, "error": None, "at": 0, "delivery_id": delivery_id}
    finally:
        server.shutdown()


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data",  # cloud metadata
    "http://127.0.0.1:{redis}/",                # the service's own Redis
    "http://[::1]:6379/",
    "http://10.0.0.1/",
    "http://localhost:{receiver}/",             # listed as 127.0.0.1:port, not by this name
    "http://127.0.0.1:{other}/",                # listed host, another port
    "gopher://127.0.0.1:6379/",
    "http://[::1",                              # not a URL at all
    "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:6379/",  # full-width "localhost"
])
def test_webhooks_into_the_operators_network_are_refused_at_submit(api_alone, redis_server, redis_db, url):
    url = url.format(redis=redis_server.port, receiver=RECEIVER_PORT, other=free_port())
    image, mask = (png_bytes(x) for x in face_and_mask())
    refused = httpx.post(api_alone.url + "/inpaint", files={"image": ("i", image), "mask": ("m", mask)},
                         data={"webhook": url})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("webhook refused"), refused.text


def test_webhooks_are_off_without_a_secret(redis_server):
    api = ApiProcess(redis_server.url, REPAINT_WEBHOOK_ALLOWED_HOSTS="*", REPAINT_WEBHOOK_SECRET="")
    try:
        image, mask = (png_bytes(x) for x in face_and_mask())
        r = httpx.post(api.url + "/inpaint", files={"image": ("i", image), "mask": ("m", mask)},
                       data={"webhook": "http://93.184.216.34/hook"})
        assert r.status_code == 422 and "REPAINT_WEBHOOK_SECRET" in r.json()["detail"]
        assert "webhooks are off: REPAINT_WEBHOOK_SECRET is empty" in " ".join(
            httpx.get(api.url + "/readyz").json()["warnings"])
    finally:
        api.stop()
