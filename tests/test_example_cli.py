"""`repaint example`: an image and a mask suited to the model, written where asked, and the commands to run next;
`repaint submit` with a sampler and its parameters against a real service."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.procs import ROOT, ApiProcess, WorkerProcess, free_port


def run_example(cwd: Path, *args: str, env: dict | None = None, rc: int = 0) -> subprocess.CompletedProcess:
    """`python -m service.cli example ...` from `cwd` (not the repository), as an installed command would run."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("REPAINT_URL", "REPAINT_API_KEY")}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    done = subprocess.run([sys.executable, "-m", "service.cli", "example", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == rc, done.stderr
    return done


def check_pair(folder: Path) -> tuple[Image.Image, np.ndarray]:
    image_path, mask_path = folder / "image.png", folder / "mask.png"
    assert image_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mask_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image, mask = Image.open(image_path), Image.open(mask_path)
    assert image.format == mask.format == "PNG"
    assert image.size == mask.size
    values = np.asarray(mask.convert("L"))
    assert set(np.unique(values)) <= {0, 255}
    assert 0 < (values == 255).mean() < 0.5  # something to fill, most of the picture kept
    return image, values


def submit_line(stdout: str) -> list[str]:
    [line] = [ln for ln in stdout.splitlines() if " submit " in ln]
    return shlex.split(line)


def test_faces32_example_is_written_only_into_the_output_folder(tmp_path):
    done = run_example(tmp_path, "-o", "out", "--model", "faces32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image.png", "mask.png"]
    image, mask = check_pair(tmp_path / "out")
    assert image.size == (128, 128) and image.mode == "RGB"
    out = (tmp_path / "out").resolve()
    argv = submit_line(done.stdout)
    assert argv[1:6] == ["submit", str(out / "image.png"), str(out / "mask.png"), "-o", str(out / "result.png")]
    # The whole face must reach the 32 px model: `auto` would crop around the eye and zoom in.
    assert argv[argv.index("--strategy") + 1] == "resize" and argv[argv.index("--model") + 1] == "faces32"
    assert "strategy=resize" in done.stdout and f"image=@{out / 'image.png'}" in done.stdout
    assert "/inpaint" in done.stdout and "/result" in done.stdout


def test_no_service_falls_back_to_faces32_with_a_note(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = run_example(tmp_path, "-o", str(tmp_path / "new" / "dir"), "--url", url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    image, _ = check_pair(tmp_path / "new" / "dir")
    assert image.size == (128, 128)
    assert "no service answered" in done.stdout and "faces32" in done.stdout
    argv = submit_line(done.stdout)
    assert argv[argv.index("--url") + 1] == url and argv[argv.index("--model") + 1] == "faces32"


class _Models(BaseHTTPRequestHandler):
    listing: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps(self.listing).encode()
        self.send_response(200 if self.path == "/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_running_service_default_model_decides(tmp_path):
    from worker.catalog import MODELS

    _Models.listing = {"default": "places256", "presets": {},
                       "models": [{**MODELS["faces32"], "default": False}, {**MODELS["places256"], "default": True}]}
    _Models.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = run_example(tmp_path, "-o", "out", env={"REPAINT_URL": url, "REPAINT_API_KEY": "k1"})
    finally:
        server.shutdown()
    assert _Models.seen == [("/models", "Bearer k1")]
    image, _ = check_pair(tmp_path / "out")
    assert image.size == (256, 256)
    assert "places256" in done.stdout and "any photo works" in done.stdout
    argv = submit_line(done.stdout)
    assert argv[argv.index("--url") + 1] == url
    assert "--api-key" not in argv and "k1" not in done.stdout  # the key is never printed: submit reads the environment
    assert '-H "Authorization: Bearer $REPAINT_API_KEY"' in done.stdout


def _serve_listing(listing: dict):
    _Models.listing, _Models.seen = listing, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _folder_entry(name: str, domain: str, *, photographic: bool, size: int) -> dict:
    """A diffusers folder as GET /models describes it (only the fields the example reads)."""
    return {"name": name, "image_size": size, "class_cond": False, "source": "diffusers", "domain": domain,
            "photographic": photographic, "framing": "whole", "default": True}


def test_a_diffusers_folder_of_churches_gets_no_cartoon_face(tmp_path):
    """The same choice as the page's Try an example: no stand-in unlike the model's data."""
    server, url = _serve_listing({"default": "church", "presets": {}, "models": [
        _folder_entry("church", "photographs of church exteriors (LSUN church)", photographic=True, size=256)]})
    try:
        done = run_example(tmp_path, "-o", "out", "--url", url, rc=1)
    finally:
        server.shutdown()
    assert not (tmp_path / "out").exists()
    assert "no example for model 'church'" in done.stderr and "church exteriors" in done.stderr
    assert "repaint submit IMAGE MASK -o OUT --model church" in done.stderr


def test_a_diffusers_folder_of_faces_gets_the_face_stand_in(tmp_path):
    server, url = _serve_listing({"default": "ffhq64", "presets": {}, "models": [
        _folder_entry("ffhq64", "aligned face photographs (FFHQ)", photographic=True, size=64)]})
    try:
        done = run_example(tmp_path, "-o", "out", "--url", url)
    finally:
        server.shutdown()
    image, _ = check_pair(tmp_path / "out")
    assert image.size[0] > 64  # drawn larger than the model, resized down by the service
    argv = submit_line(done.stdout)
    assert argv[argv.index("--model") + 1] == "ffhq64" and argv[argv.index("--strategy") + 1] == "resize"
    assert "stand-in" in done.stdout


@pytest.mark.parametrize("model", ["faces32", "tiny", "celeba256", "places256", "imagenet256"])
def test_every_model_gets_a_binary_mask_and_a_valid_submit_command(tmp_path, monkeypatch, capsys, model):
    from service import cli
    from worker.catalog import MODELS

    monkeypatch.delenv("REPAINT_API_KEY", raising=False)
    monkeypatch.delenv("REPAINT_URL", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["example", "-o", str(tmp_path), "--model", model])
    assert exit_.value.code == 0
    image, mask = check_pair(tmp_path)
    size = MODELS[model]["image_size"]
    assert image.size == ((size * 4, size * 4) if size <= 64 else (size, size))
    # The printed command is one `repaint submit` accepts, with what the model needs.
    captured = {}
    monkeypatch.setattr(cli, "submit", lambda args: captured.update(vars(args)) or 0)
    with pytest.raises(SystemExit):
        cli.main(submit_line(capsys.readouterr().out)[1:])
    assert captured["model"] == model and captured["mask"] == str(tmp_path.resolve() / "mask.png")
    assert captured["class_label"] == (950 if model == "imagenet256" else None)


def test_the_faces32_mask_covers_one_eye_on_the_model_pixel_grid():
    from service import examples

    ex = examples.example_for("faces32", 32)
    mask = np.asarray(ex.mask) == 255
    (lx, ly), (rx, ry) = examples.face_params(examples.FACE_SEED, 128).eye_centres()
    assert mask[int(ly), int(lx)] and not mask[int(ry), int(rx)]
    # Whole 4x4 blocks: at the model's 32 px every pixel is either fully masked or fully kept.
    blocks = mask.reshape(32, 4, 32, 4).mean(axis=(1, 3))
    assert set(np.unique(blocks)) == {0.0, 1.0}
    # Scaled to the model's size, the example is the training generator's 32 px face, near enough.
    small = np.asarray(ex.image.resize((32, 32), Image.Resampling.BOX), dtype=float)
    assert np.abs(small - examples.face(examples.FACE_SEED, 32)[0]).mean() < 3


def test_examples_and_the_example_command_stay_torch_free(tmp_path):
    code = ("import sys; from service import cli\n"
            "try:\n"
            f"    cli.main(['example', '-o', {str(tmp_path / 'o')!r}, '--model', 'imagenet256'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def run_submit(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REPAINT_URL", "REPAINT_API_KEY")}
    return subprocess.run([sys.executable, "-m", "service.cli", "submit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def example_pair(tmp_path) -> list[str]:
    from service import examples

    ex = examples.example_for("tiny", 32)
    ex.image.save(tmp_path / "image.png")
    ex.mask.save(tmp_path / "mask.png")
    return [str(tmp_path / "image.png"), str(tmp_path / "mask.png"), "-o", str(tmp_path / "result.png")]


def test_submit_runs_the_chosen_sampler_with_the_parameters_given(redis_server, redis_db, example_pair, tmp_path):
    api = ApiProcess(redis_server.url)
    worker = WorkerProcess(redis_server.url, "cli-sampler").wait_ready(redis_db)
    try:
        done = run_submit(*example_pair, "--url", api.url, "--sampler", "ddnm", "--eta", "0.5", "--steps", "10",
                          "--strategy", "resize", "--seed", "3")
        assert done.returncode == 0, done.stderr
        [job_id] = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("job ") and "queued" in line]
        params = httpx.get(f"{api.url}/jobs/{job_id}").json()["params"]
    finally:
        worker.stop()
        api.stop()
    # Only what was given was sent: ddnm's other parameters are its defaults, and no RePaint field came along.
    assert (params["sampler"], params["eta"], params["steps"]) == ("ddnm", 0.5, 10), params
    assert (params["travel_length"], params["travel_repeat"], params["evaluations_per_sample"]) == (1, 1, 10), params
    assert "jump_length" not in params and "preset" not in params, params
    assert Image.open(tmp_path / "result.png").size == (128, 128)


def test_submit_prints_the_refusal_of_a_parameter_of_another_sampler(redis_server, redis_db, example_pair):
    from models.sampler_settings import SETTINGS
    from worker.presets import PRESETS

    # A preset and a sampler it does not use (presets may change sampler as they are measured).
    preset, own, other = next((name, p.sampler, s) for name, p in PRESETS.items()
                              for s in SETTINGS if s != p.sampler)
    api = ApiProcess(redis_server.url)  # refused before anything is queued: no worker needed
    try:
        misplaced = run_submit(*example_pair, "--url", api.url, "--sampler", "repaint", "--eta", "0.5")
        mismatch = run_submit(*example_pair, "--url", api.url, "--preset", preset, "--sampler", other)
        invalid = run_submit(*example_pair, "--url", api.url, "--num-samples", "0")
    finally:
        api.stop()
    assert misplaced.returncode == 2, misplaced.stderr
    assert misplaced.stderr.strip() == "refused: HTTP 422: eta is a parameter of sampler ddnm, not of repaint"
    assert mismatch.returncode == 2 and f"preset {preset} uses sampler {own}, not {other}" in mismatch.stderr
    # A field's validation errors read as `field: why`, not as JSON.
    assert invalid.returncode == 2 and "refused: HTTP 422: num_samples: " in invalid.stderr, invalid.stderr
    assert not redis_db.keys("repaint:job:*")
