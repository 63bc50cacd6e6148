"""A diffusers model folder served end to end: redis-server, `python -m worker.main` with
REPAINT_MODEL=<folder>, the API told the same folder, jobs through HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.procs import ROOT, ApiProcess, WorkerProcess, _env, submit, wait_final

diffusers = pytest.importorskip("diffusers")

from tests.models.test_diffusers import SIZE, save_pipeline  # noqa: E402  (needs diffusers)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    eps = save_pipeline(root / "ddpm-ema-church-16", seed=1)
    (eps / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    v_learned = save_pipeline(root / "v-learned", prediction="v_prediction", variance="learned_range", safe=False,
                              seed=2)
    return {"eps": eps, "v": v_learned}


def image_and_mask():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    return image, Image.fromarray(mask)


def test_folders_serve_jobs_end_to_end(redis_server, redis_db, folders):
    """A pipeline folder (safetensors, epsilon) as the default model and a named one (bin,
    v-prediction, learned variance) beside it, each with its own worker."""
    models_env = {"REPAINT_MODEL": str(folders["eps"]), "REPAINT_MODELS": f"vlearned={folders['v']}"}
    api = ApiProcess(redis_server.url, **models_env)
    workers = [WorkerProcess(redis_server.url, "d1", model=str(folders["eps"])).wait_ready(redis_db),
               WorkerProcess(redis_server.url, "d2", model=f"vlearned={folders['v']}").wait_ready(redis_db)]
    try:
        client = api.client()
        listing = client.get("/models").json()
        assert listing["default"] == "ddpm-ema-church-16"
        entries = {m["name"]: m for m in listing["models"]}
        church = entries["ddpm-ema-church-16"]
        assert church["source"] == "diffusers" and church["image_size"] == SIZE and church["workers"] == 1
        assert "church" in church["domain"] and church["licence"].startswith("apache-2.0")
        assert entries["vlearned"]["workers"] == 1 and "predicts v" in entries["vlearned"]["description"]

        image, mask = image_and_mask()
        ids = {name: submit(client, image, mask, model=name, sampler=sampler, steps=10, seed=3)
               for name, sampler in (("ddpm-ema-church-16", "ddnm"), ("vlearned", "repaint"))}
        for name, job_id in ids.items():
            job = wait_final(client, job_id, timeout=120)
            assert job["status"] == "succeeded", job
            assert job["model"] == name
            result = np.asarray(Image.open(io.BytesIO(client.get(job["links"]["results"][0]).content)).convert("RGB"))
            keep = np.asarray(mask) == 0
            assert result.shape == (48, 64, 3)
            # Far from the hole (beyond the blend band) the upload's pixels come back exactly.
            far = keep.copy()
            far[6:34, 16:44] = False
            assert np.array_equal(result[far], np.asarray(image)[far])
    finally:
        for w in workers:
            w.stop()
        api.stop()


def test_a_folder_that_is_not_a_ddpm_stops_the_worker_with_the_reason(redis_server, tmp_path, folders):
    import shutil

    folder = tmp_path / "sd-like"
    shutil.copytree(folders["eps"], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    done = subprocess.run([sys.executable, "-m", "worker.main"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=_env(redis_server.url, REPAINT_MODEL=str(folder), REPAINT_DEVICE="cpu"))
    assert done.returncode == 78, done.stderr
    assert "text- or image-conditioned UNet" in done.stderr and "Traceback" not in done.stderr


def test_the_api_refuses_an_unknown_model_name_at_start(redis_server):
    done = subprocess.run([sys.executable, "-m", "service.cli", "api", "--port", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=_env(redis_server.url, REPAINT_MODEL="celeb256"))
    assert done.returncode != 0 and "unknown model 'celeb256'" in done.stderr
