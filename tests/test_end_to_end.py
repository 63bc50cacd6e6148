"""End to end through real processes: redis-server, uvicorn and `python -m worker.main`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import face_and_mask, png_bytes
from tests.procs import ROOT, ApiProcess, WorkerProcess, submit, wait_final
from worker.blending import band_weights
from worker import jobs

FAST = {"steps": 20, "jump_length": 5, "jump_n_sample": 2}  # 35 evaluations


@pytest.fixture()
def api(redis_server, redis_db):
    proc = ApiProcess(redis_server.url)
    yield proc
    proc.stop()


@pytest.fixture()
def worker(redis_server, redis_db):
    proc = WorkerProcess(redis_server.url, "w1").wait_ready(redis_db)
    yield proc
    proc.stop()


def pixels(png: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"))).reshape(-1, 3)


def test_upload_runs_on_a_worker_with_progress_and_exact_known_pixels(api, worker):
    client = api.client()
    image, mask = face_and_mask(seed=1)
    # 460 evaluations: long enough to watch progress move.
    job_id = submit(client, image, mask, steps=100, jump_length=10, jump_n_sample=5, seed=11)
    seen = []
    job = wait_final(client, job_id, seen=seen)
    assert job["status"] == "succeeded", job
    running = [j for j in seen if j["status"] == "running" and j["progress"]]
    assert running, "never saw the job running"
    steps = [j["progress"]["step"] for j in running]
    assert any(0 < s < 460 for s in steps) and steps == sorted(steps)
    assert job["progress"] == {**job["progress"], "step": 460, "total": 460, "fraction": 1.0}
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]
    assert job["params"]["seed"] == 11
    # What was used, not what was left to the default: the band width the worker chose, its plan.
    assert job["params"]["blend"] == 2 and job["plan"]["strategy"] == "crop" and job["params"]["strategy"] == "auto"

    result = client.get(job["links"]["results"][0])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    out, original = pixels(result.content), pixels(png_bytes(image))
    fill = np.array(mask) >= 128
    beyond = torch.from_numpy(band_weights(fill, job["params"]["blend"]) == 0).reshape(-1)
    assert torch.equal(out[beyond], original[beyond])  # every pixel beyond the blend band, bit for bit
    masked = torch.from_numpy(fill).reshape(-1)
    assert not torch.equal(out[masked], original[masked])


def test_num_samples_gives_several_results_and_seed_reproduces(api, worker):
    client = api.client()
    image, mask = face_and_mask(seed=2)
    first = wait_final(client, submit(client, image, mask, num_samples=2, seed=5, **FAST))
    again = wait_final(client, submit(client, image, mask, num_samples=1, seed=5, **FAST))
    assert len(first["links"]["results"]) == 2
    a, b = (client.get(u).content for u in first["links"]["results"])
    assert a != b  # seeds 5 and 6
    assert client.get(again["links"]["results"][0]).content == a  # same seed, same output
    assert client.get(f"/jobs/{first['id']}/result?index=2").status_code == 404


def test_metrics_show_job_figures(api, worker):
    client = api.client()
    image, mask = face_and_mask()
    wait_final(client, submit(client, image, mask, **FAST))
    text = client.get("/metrics").text
    assert 'repaint_jobs_total{model="tiny",status="succeeded"} 1.0' in text
    assert 'repaint_model_evaluations_total{model="tiny"} 35.0' in text
    assert 'repaint_workers{model="tiny"} 1.0' in text
    assert 'repaint_queue_wait_seconds_count{model="tiny"} 1.0' in text
    assert 'repaint_job_run_seconds_count{model="tiny"} 1.0' in text
    assert "repaint_http_requests_total" in text
    assert client.get("/readyz").json()["status"] == "ready"


def test_a_failing_job_fails_readably_and_the_worker_keeps_serving(api, worker, redis_db):
    client = api.client()
    # Make the API believe the model is class-conditional: the worker must refuse the label.
    info = json.loads(redis_db.hget(jobs.models_key(), "tiny"))
    redis_db.hset(jobs.models_key(), "tiny", json.dumps({**info, "class_cond": True, "num_classes": 10}))
    image, mask = face_and_mask()
    bad = wait_final(client, submit(client, image, mask, class_label=3, **FAST))
    assert bad["status"] == "failed"
    assert bad["error"]["type"] == "invalid_input" and "not class-conditional" in bad["error"]["message"]
    assert client.get(f"/jobs/{bad['id']}/result").status_code == 409
    redis_db.hset(jobs.models_key(), "tiny", json.dumps(info))
    assert wait_final(client, submit(client, image, mask, **FAST))["status"] == "succeeded"
    assert 'status="failed"} 1.0' in client.get("/metrics").text


def test_two_workers_share_one_queue(api, redis_server, redis_db):
    workers = [WorkerProcess(redis_server.url, f"share{i}") for i in range(2)]
    try:
        for w in workers:
            w.wait_ready(redis_db)
        client = api.client()
        image, mask = face_and_mask()
        ids = [submit(client, image, mask, steps=50, jump_length=5, jump_n_sample=3) for _ in range(6)]
        for job_id in ids:
            assert wait_final(client, job_id)["status"] == "succeeded"
        names = {redis_db.hget(jobs.job_key(i), "worker").decode() for i in ids}
        assert names == {"share0", "share1"}
        assert client.get("/models").json()["models"][0]["workers"] == 2
    finally:
        for w in workers:
            w.stop()


def test_api_process_never_imports_torch():
    code = ("import sys; from service.app import create_app; create_app(); "
            "import service.cli, service.routes.inpaint; "
            # The API uses the torch-free modules of models (settings, schedules, the registry of models,
            # diffusers folder configs); nothing else of models.
            "bad = [m for m in sys.modules if m in ('torch', 'worker.runtime', 'worker.tasks') or "
            "(m.startswith('models.') and m not in ('models.schedule', 'models.sampler_settings', "
            "'models.registry', 'models.config', 'models.diffusers_folder'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_serving_never_imports_training():
    """The API (its examples draw the demo model's faces: service/faces.py) and the worker need
    nothing from training/: a service can be shipped without it."""
    code = ("import sys; from service.app import create_app; create_app(); "
            "import service.cli, service.examples, worker.main; "
            "bad = [m for m in sys.modules if m == 'training' or m.startswith('training.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_scale_from_zero_jobs_wait_for_the_first_worker(redis_server, redis_db):
    """No worker has ever registered (compose starting, workers scaled to zero by an autoscaler
    on the queue length): the default model still takes jobs, and the first worker runs them."""
    api = ApiProcess(redis_server.url, REPAINT_MODELS="faces32")
    try:
        client = api.client()
        assert redis_db.hlen(jobs.models_key()) == 0
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert set(models) == {"tiny", "faces32"} and models["tiny"]["workers"] == 0
        job_id = submit(client, *face_and_mask(), steps=20, jump_length=5, jump_n_sample=2)
        assert redis_db.llen(f"rq:queue:{jobs.queue_name('tiny')}") == 1  # what KEDA's list scaler reads
        assert client.get("/models").json()["models"][1]["queued"] == 1
        assert "1 job(s) wait" in " ".join(client.get("/readyz").json()["warnings"])
        assert client.post("/inpaint", files={"image": ("i.png", b"x")}, data={"model": "places256"}).status_code == 404
        worker = WorkerProcess(redis_server.url, "first").wait_ready(redis_db)
        try:
            assert wait_final(api.client(), job_id)["status"] == "succeeded"
        finally:
            worker.stop()
    finally:
        api.stop()
