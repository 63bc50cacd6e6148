"""A model its workers cannot load is state, not only a log line: the API (readiness, GET /models,
refusals), `python -m worker.health`, `repaint submit` and `repaint serve` all say why, with real
processes against a real Redis and diffusers folders broken the two ways users break them (the
weights file missing, or truncated)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import face_and_mask, png_bytes
from tests.procs import ROOT, ApiProcess, WorkerProcess, _env, free_port

pytest.importorskip("diffusers")

from tests.models.test_diffusers import save_pipeline  # noqa: E402  (needs diffusers)

WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("good") / "ddpm-faces-16", seed=1)


def broken_copy(good: Path, where: Path, how: str) -> Path:
    folder = where / f"broken-{how}"
    shutil.copytree(good, folder)
    if how == "missing":
        (folder / WEIGHTS).unlink()
    else:  # truncated: the header says more than the file holds
        data = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(data[: len(data) // 3])
    return folder


def run_worker(redis_url: str, folder: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.main"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=_env(redis_url, REPAINT_MODEL=str(folder), REPAINT_DEVICE="cpu",
                                   REPAINT_WORKER_NAME=name))


@pytest.mark.parametrize("how, words", [("missing", "has no weights"), ("truncated", "cannot read")])
def test_a_model_no_worker_can_load_is_refused_with_the_reason_everywhere(redis_server, redis_db, tmp_path,
                                                                          good_folder, how, words):
    folder = broken_copy(good_folder, tmp_path, how)
    name = folder.name
    api = ApiProcess(redis_server.url, REPAINT_MODEL=str(folder))
    try:
        done = run_worker(redis_server.url, folder, "gpu-box-1")
        assert done.returncode == 78 and words in done.stderr, done.stderr[-2000:]
        client = api.client()

        ready = client.get("/readyz")
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded", body
        assert body["models"][name]["startup_failures"][0]["where"] == "gpu-box-1"
        assert any(f"model {name}: cannot load" in w and words in w and "0 live worker(s)" in w
                   for w in body["warnings"]), body["warnings"]

        listing = client.get("/models").json()
        assert words in listing["unavailable"][name]["reason"], listing
        assert listing["unavailable"][name]["startup_failures"][0]["stage"] == "load"

        image, mask = (png_bytes(x) for x in face_and_mask(size=16, seed=0))
        refused = client.post("/inpaint", files={"image": ("i.png", image), "mask": ("m.png", mask)})
        assert refused.status_code == 503 and words in refused.json()["detail"], refused.text
        assert refused.headers["Retry-After"] and "restart its workers" in refused.json()["detail"]

        health = subprocess.run([sys.executable, "-m", "worker.health"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60, env=_env(redis_server.url, REPAINT_MODEL=str(folder),
                                                     REPAINT_WORKER_NAME="gpu-box-1"))
        assert health.returncode == 1 and "cannot load" in health.stdout and words in health.stdout, health
        assert redis_server.url.rsplit("/", 1)[0] in health.stderr  # which Redis it checked

        (tmp_path / "i.png").write_bytes(image)
        (tmp_path / "m.png").write_bytes(mask)
        submitted = subprocess.run([sys.executable, "-m", "service.cli", "submit", str(tmp_path / "i.png"),
                                    str(tmp_path / "m.png"), "-o", str(tmp_path / "out.png"), "--url", api.url],
                                   cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 2 and "HTTP 503" in submitted.stderr and words in submitted.stderr

        # Fixed and restarted at the same place: the failure is over, and jobs are taken again.
        shutil.copy(good_folder / WEIGHTS, folder / WEIGHTS)
        worker = WorkerProcess(redis_server.url, "gpu-box-1", model=str(folder)).wait_ready(redis_db)
        try:
            assert client.get("/readyz").json()["status"] == "ready"
            assert client.get("/models").json()["unavailable"] == {}
            taken = client.post("/inpaint", files={"image": ("i.png", image), "mask": ("m.png", mask)},
                                data={"steps": "5"})
            assert taken.status_code == 202, taken.text
        finally:
            worker.stop()
    finally:
        api.stop()


def test_repaint_serve_stops_with_the_reason_when_its_worker_cannot_load(tmp_path, good_folder):
    folder = broken_copy(good_folder, tmp_path, "missing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPAINT_")}
    env.update(REPAINT_MODEL=str(folder), REPAINT_DEVICE="cpu", REPAINT_RUN_FILE=str(tmp_path / "serve.json"))
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 78, done.stderr[-3000:]
    last = [line for line in done.stderr.splitlines() if line.startswith("repaint: the worker exited")]
    assert last and f"model {folder.name} cannot load" in last[0] and "has no weights" in last[0], done.stderr[-3000:]
    assert not (tmp_path / "serve.json").exists()
