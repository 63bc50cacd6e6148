"""The HTTP contract against a real Redis: every documented 4xx path, no worker needed."""

from __future__ import annotations

import io
import json
import random
import uuid
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import ApiSettings
from tests.conftest import face_and_mask, png_bytes
from worker import jobs
from worker.runtime import Runtime
from worker.settings import WorkerSettings


@pytest.fixture(scope="module")
def tiny_description():
    return Runtime(WorkerSettings(model="tiny", device="cpu")).describe()


@pytest.fixture()
def client(redis_server, redis_db, tiny_description):
    redis_db.hset(jobs.models_key(), "tiny", json.dumps(tiny_description))
    settings = ApiSettings(redis_url=redis_server.url, model="tiny", max_upload_bytes=200_000,
                           max_image_pixels=1_000_000)
    with TestClient(create_app(settings)) as c:
        yield c


def post(client, image=None, mask=None, **fields):
    img, msk = face_and_mask()
    files = {"image": ("image.png", image if image is not None else png_bytes(img)),
             "mask": ("mask.png", mask if mask is not None else png_bytes(msk))}
    return client.post("/inpaint", files=files, data={k: str(v) for k, v in fields.items()})


def test_accepted_job_is_queued_with_location_and_defaults(client, redis_db):
    r = post(client, seed=7)
    assert r.status_code == 202
    body = r.json()
    assert uuid.UUID(body["id"]).version == 4
    assert r.headers["location"] == f"/jobs/{body['id']}" == body["links"]["self"]
    job = client.get(f"/jobs/{body['id']}").json()
    assert job["status"] == "queued" and job["position"] == 0 and job["model"] == "tiny"
    assert job["params"] == {"seed": 7, "num_samples": 1, "sampler": "repaint", "steps": 250, "jump_length": 10,
                             "jump_n_sample": 10, "n_sample": 1, "jump2_length": 1, "jump2_n_sample": 1,
                             "jump3_length": 1, "jump3_n_sample": 1, "start_resampling": 100_000_000,
                             "evaluations_per_sample": 2410, "strategy": "auto",
                             "blend": None, "mask_dilate": 0, "output_format": "png",
                             "image": {"width": 32, "height": 32, "mode": "RGB"}}
    # The upload travels in its own keys with a TTL; the RQ payload is JSON.
    assert 0 < redis_db.ttl(jobs.input_key(body["id"], "image")) <= 24 * 3600
    raw = zlib.decompress(redis_db.hget(f"rq:job:{body['id']}", "data"))
    assert json.loads(raw)[0] == jobs.TASK_PATH  # JSON, not pickle


def test_the_known_form_fields_are_the_endpoints_fields(client):
    from service.routes.inpaint import form_fields

    schema = client.get("/openapi.json").json()
    ref = schema["paths"]["/inpaint"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    fields = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert set(fields) == form_fields()


def test_seed_is_drawn_and_reported_when_omitted(client):
    job_id = post(client).json()["id"]
    assert isinstance(client.get(f"/jobs/{job_id}").json()["params"]["seed"], int)


def test_queue_position_counts_jobs_ahead(client):
    ids = [post(client).json()["id"] for _ in range(3)]
    assert [client.get(f"/jobs/{i}").json()["position"] for i in ids] == [0, 1, 2]


def test_result_before_finish_is_409_with_status(client):
    job_id = post(client).json()["id"]
    r = client.get(f"/jobs/{job_id}/result")
    assert r.status_code == 409 and r.json()["detail"]["status"] == "queued"


# Fixed ids (a job that was never made): pytest-xdist needs every process to collect the same tests.
@pytest.mark.parametrize("path", ["/jobs/3f1c2a9e-7b4d-4e8a-9c61-5d2e8f0b7a14", "/jobs/not-a-uuid",
                                  "/jobs/8a7e6d5c-4b3a-4921-8f0e-1d2c3b4a5968/result"])
def test_unknown_jobs_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "detail" in r.json()


def _image(size=(32, 32), fmt="PNG", mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("kwargs, code, fragment", [
    ({"image": b"definitely not an image"}, 415, "it looks like text"),
    ({"image": b"%PDF-1.4\n%binary"}, 415, "it looks like application/pdf"),
    ({"steps": 1}, 422, None),
    ({"image": _image()[:60]}, 422, "not a readable image"),
    ({"image": _image(fmt="GIF", mode="P")}, 415, "PNG, JPEG or WebP"),
    ({"mask": _image((16, 16), mode="L")}, 422, "must match"),
    ({"mask": _image(mode="L")[:0]}, 422, "empty"),
    ({"mask": png_bytes(Image.new("L", (32, 32), 0))}, 422, "selects no pixel"),
    ({"model": "nope"}, 404, "unknown model"),
    ({"seed": -1}, 422, None),
    ({"steps": "abc"}, 422, None),
    ({"steps": 5000}, 422, "at most 1000"),
    ({"num_samples": 99}, 422, "num_samples"),
    ({"jump_length": 0}, 422, None),
    ({"class_label": 3}, 422, "not class-conditional"),
    ({"steps": 1000, "jump_n_sample": 500}, 422, "network evaluations"),
    ({"preset": "ultra"}, 422, "unknown preset"),
    ({"stpes": 20}, 422, "unknown form field(s) ['stpes']"),
])
def test_bad_input_is_a_clear_4xx(client, kwargs, code, fragment):
    r = post(client, **kwargs)
    assert r.status_code == code, r.text
    assert "detail" in r.json()
    if fragment:
        assert fragment in json.dumps(r.json()["detail"])


def test_upload_over_the_limit_is_413(client):
    big = png_bytes(Image.frombytes("RGB", (400, 400), random.Random(0).randbytes(400 * 400 * 3)))
    assert len(big) > 200_000
    r = post(client, image=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_decompression_bomb_is_refused_from_the_header(client):
    r = post(client, image=_image((1100, 1000), mode="L"), mask=_image((1100, 1000), mode="L"))
    assert r.status_code == 413 and "pixel limit" in r.json()["detail"]


def test_full_mask_is_plain_generation_and_allowed(client):
    assert post(client, mask=png_bytes(Image.new("L", (32, 32), 255))).status_code == 202


def test_transparent_mask_pixels_count_as_unpainted(client, redis_db):
    mask = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    mask.paste((255, 255, 255, 255), (0, 0, 8, 8))
    job_id = post(client, mask=png_bytes(mask)).json()["id"]
    stored = Image.open(io.BytesIO(redis_db.get(jobs.input_key(job_id, "mask"))))
    assert stored.histogram()[255] == 64


def test_models_lists_sizes_defaults_and_the_default(client):
    body = client.get("/models").json()
    assert body["default"] == "tiny"
    (tiny,) = body["models"]
    assert tiny["image_size"] == 32 and tiny["default"] is True and tiny["workers"] == 0
    assert tiny["defaults"] == {"steps": 250, "jump_length": 10, "jump_n_sample": 10, "n_sample": 1,
                                "classifier_scale": 0.0}


def test_health_and_readiness_without_workers(client):
    """No worker is no reason to refuse work: jobs wait in the queue (autoscaling from zero),
    and readiness says what keeps them waiting."""
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["workers"] == 0
    assert any("no live worker for model tiny" in w for w in r.json()["warnings"])
    assert post(client).status_code == 202
    assert "1 job(s) wait" in " ".join(client.get("/readyz").json()["warnings"])


def test_openapi_documents_the_contract(client):
    spec = client.get("/openapi.json").json()
    assert {"/inpaint", "/jobs/{job_id}", "/jobs/{job_id}/result", "/models", "/healthz", "/readyz",
            "/metrics"} <= set(spec["paths"])
    assert {"202", "404", "413", "415", "422"} <= set(spec["paths"]["/inpaint"]["post"]["responses"])


def test_redis_down_is_503_json(tiny_description):
    from tests.procs import RedisServer

    server = RedisServer().start()
    server.client().hset(jobs.models_key(), "tiny", json.dumps(tiny_description))
    with TestClient(create_app(ApiSettings(redis_url=server.url, model="tiny"))) as c:
        assert post(c).status_code == 202
        server.stop()
        r = c.get("/models")
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_quality_presets_set_the_sampler_and_schedule_and_fields_override_them(client):
    presets = client.get("/models").json()["presets"]
    for name, preset in presets.items():
        job = client.get(f"/jobs/{post(client, preset=name).json()['id']}").json()
        assert job["params"]["preset"] == name and job["params"]["sampler"] == preset["sampler"]
        assert {k: job["params"][k] for k in preset["settings"]} == preset["settings"]
        assert job["params"]["evaluations_per_sample"] == preset["evaluations"]
        assert preset["budget"] is None or preset["evaluations"] <= preset["budget"]
    job = client.get(f"/jobs/{post(client, preset='paper', steps=60).json()['id']}").json()
    assert (job["params"]["steps"], job["params"]["jump_length"]) == (60, 10)
    assert presets["paper"] == {"sampler": "repaint", "settings": {"steps": 250, "jump_length": 10, "jump_n_sample": 10},
                                "evaluations": 2410, "budget": None, "description": presets["paper"]["description"]}


def test_models_lists_the_samplers_and_their_parameters(client):
    samplers = {s["name"]: s for s in client.get("/models").json()["samplers"]}
    assert set(samplers) == {"repaint", "ddnm"}
    params = {p["name"]: p for p in samplers["ddnm"]["parameters"]}
    assert params["eta"] == {"name": "eta", "type": "number", "default": 0.85, "minimum": 0.0, "maximum": 1.0,
                             "description": params["eta"]["description"], "advanced": False}
    # How each walks the diffusion, for clients (the page) that count evaluations themselves.
    assert samplers["ddnm"]["schedule"]["jump_length"] == "travel_length"
    assert samplers["ddnm"]["schedule"]["n_sample"] == 1
    assert samplers["repaint"]["takes_model_defaults"] and not samplers["ddnm"]["takes_model_defaults"]
    assert {"steps", "jump_length", "jump_n_sample", "n_sample", "jump2_length", "jump2_n_sample", "jump3_length",
            "jump3_n_sample", "start_resampling"} == {p["name"] for p in samplers["repaint"]["parameters"]}


def test_output_formats_and_strategies_are_defined_once_and_read_everywhere(client):
    """worker/output_formats.py and worker.params.STRATEGIES: the form (its OpenAPI schema and its
    validation), GET /models (which the page names its downloads from), the CLI's choices, folder
    mode's suffixes and the encoder all read the one definition."""
    import io

    from PIL import Image

    from service.cli import build_parser
    from worker import encoding, output_formats
    from worker.params import STRATEGIES

    listing = client.get("/models").json()
    assert listing["job_statuses"] == {"queued": False, "running": False, "succeeded": True, "failed": True,
                                       "canceled": True}
    assert list(listing["output_formats"]) == list(output_formats.NAMES)
    assert listing["output_formats"]["jpeg"] == {"media_type": "image/jpeg", "suffix": ".jpg", "max_side": 65500,
                                                 "lossless": False}
    assert listing["strategies"] == list(STRATEGIES)
    form = client.get("/openapi.json").json()["components"]["schemas"]["Body_create_inpaint_job_inpaint_post"]["properties"]
    assert form["output_format"]["enum"] == list(output_formats.NAMES)
    assert form["strategy"]["enum"] == list(STRATEGIES)
    refused = post(client, output_format="gif")
    assert refused.status_code == 422 and "gif" in refused.text
    _, submit_parser = build_parser()
    actions = {a.dest: a for a in submit_parser._actions}
    assert list(actions["output_format"].choices) == list(output_formats.NAMES)
    assert list(actions["strategy"].choices) == list(STRATEGIES)
    for fmt in output_formats.FORMATS:  # what the encoder writes is what the format says
        written = Image.open(io.BytesIO(encoding.encode(Image.new("RGB", (8, 8)), fmt.name)))
        assert Image.MIME[written.format] == fmt.media_type


def test_a_sampler_and_its_parameters_reach_the_job(client):
    job = client.get(f"/jobs/{post(client, sampler='ddnm', steps=40, eta=0.5, travel_length=5, travel_repeat=2).json()['id']}").json()
    assert {k: job["params"][k] for k in ("sampler", "steps", "eta", "travel_length", "travel_repeat",
                                          "evaluations_per_sample")} == {
        "sampler": "ddnm", "steps": 40, "eta": 0.5, "travel_length": 5, "travel_repeat": 2, "evaluations_per_sample": 75}
    assert "jump_length" not in job["params"]
    job = client.get(f"/jobs/{post(client, jump2_length=3, jump2_n_sample=2, start_resampling=100).json()['id']}").json()
    assert (job["params"]["jump2_length"], job["params"]["start_resampling"]) == (3, 100)


@pytest.mark.parametrize("fields, message", [
    ({"eta": 0.5}, "eta is a parameter of sampler ddnm, not of repaint"),
    ({"sampler": "ddnm", "jump_n_sample": 3}, "jump_n_sample is a parameter of sampler repaint, not of ddnm"),
    ({"sampler": "ddim"}, "unknown sampler 'ddim'"),
    ({"sampler": "ddnm", "eta": 2}, "eta must be at most 1.0"),
    ({"sampler": "ddnm", "eta": "much"}, "eta"),
    ({"sampler": "ddnm", "travel_repeat": 0}, "travel_repeat must be at least 1"),
    ({"preset": "paper", "sampler": "ddnm"}, "preset paper uses sampler repaint, not ddnm"),
    ({"jump_n_sample": 1000, "jump2_length": 5, "jump2_n_sample": 1000}, "network evaluations"),
    ({"etta": 0.5}, "unknown form field"),
])
def test_sampler_parameters_are_checked_against_the_samplers_own_rules(client, fields, message):
    r = post(client, **fields)
    assert r.status_code == 422 and message in json.dumps(r.json()["detail"]), r.json()


@pytest.mark.parametrize("size, mode", [((640, 480), "RGB"), ((31, 700), "L"), ((300, 200), "RGBA"),
                                        ((128, 128), "P"), ((200, 100), "I;16")])
def test_any_size_and_mode_is_accepted_and_kept(client, redis_db, size, mode):
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 3, size[1] // 3, size[0] // 2, size[1] // 2))
    r = post(client, image=_image(size, mode=mode), mask=png_bytes(mask))
    assert r.status_code == 202, r.text
    job = client.get(f"/jobs/{r.json()['id']}").json()
    assert job["params"]["image"] == {"width": size[0], "height": size[1], "mode": mode}
    stored = Image.open(io.BytesIO(redis_db.get(jobs.input_key(r.json()["id"], "image"))))
    assert stored.size == size and stored.mode == mode


def test_alpha_is_the_mask_when_no_mask_is_sent(client, redis_db):
    img = Image.new("RGBA", (40, 30), (10, 20, 30, 255))
    img.paste((0, 0, 0, 0), (0, 0, 10, 10))
    r = client.post("/inpaint", files={"image": ("i.png", png_bytes(img))})
    assert r.status_code == 202, r.text
    stored = Image.open(io.BytesIO(redis_db.get(jobs.input_key(r.json()["id"], "mask"))))
    assert stored.histogram()[255] == 100
    no_alpha = client.post("/inpaint", files={"image": ("i.png", _image())})
    assert no_alpha.status_code == 422 and "transparent" in no_alpha.json()["detail"]


def test_exif_rotation_is_applied(client, redis_db):
    img = Image.new("RGB", (60, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    mask = png_bytes(Image.new("L", (20, 60), 255))
    r = post(client, image=out.getvalue(), mask=mask)
    assert r.status_code == 202, r.text
    assert client.get(f"/jobs/{r.json()['id']}").json()["params"]["image"]["width"] == 20


def test_http_metrics_label_routes_by_template_never_by_raw_path(client):
    for path in ("/", "/static/app.js", "/static/style.css", "/jobs/00000000-0000-4000-8000-000000000000", "/nope"):
        client.get(path)
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("repaint_http_requests_total")]
    routes = {line.split('route="')[1].split('"')[0] for line in lines}
    assert {"/", "/static/{path}", "/jobs/{job_id}", "unmatched"} <= routes
    assert not any("app.js" in r or "0000" in r for r in routes)
    assert any('route="/static/{path}",status="200"} 2.0' in line for line in lines)


@pytest.mark.parametrize("data, named", [
    (b"PK\x03\x04" + b"\0" * 40, "application/zip"),
    (b"\0\0\0\x1cftypavif" + b"\0" * 40, "image/avif"),
    (b"GIF89a\x01\x00\x01\x00", "image/gif"),
    ("Caf\u00e9 au lait, du texte".encode("utf-8") * 300, "text"),
    (bytes(range(256)) * 4, "unknown binary data"),
])
def test_a_refused_file_is_named_by_what_it_looks_like(data, named):
    from service.uploads import detected_type

    assert detected_type(data) == named


# --- GET /models/{name}/example ----------------------------------------------------------------

def data_url_image(url: str) -> Image.Image:
    import base64

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    data = base64.b64decode(url[len(prefix):])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


@pytest.fixture()
def faces32_client(redis_server, redis_db):
    settings = ApiSettings(redis_url=redis_server.url, model="faces32", models="tiny", api_keys="k1")
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as c:
        yield c


def test_the_faces32_example_is_a_held_out_face_with_one_eye_masked(faces32_client):
    import numpy as np

    from service.faces import EVAL_SEEDS, face_params

    r = faces32_client.get("/models/faces32/example")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["width"], body["height"]) == ("faces32", 128, 128)
    assert body["form"] == {"strategy": "resize"}  # the whole face reaches the 32 px model
    assert "held-out" in body["shows"] and "eye" in body["hides"]
    assert any("photograph" in note for note in body["notes"])
    image, mask = data_url_image(body["image"]), data_url_image(body["mask"])
    assert image.size == mask.size == (128, 128) and image.mode == "RGB" and mask.mode == "L"
    values = np.asarray(mask)
    assert set(np.unique(values)) == {0, 255}  # binary: nothing half-masked
    assert 0 < (values == 255).mean() < 0.1
    # The square covers the left eye of the picture and not the right one (4x the model's pixels).
    (lx, ly), (rx, ry) = face_params(EVAL_SEEDS[0], 32).eye_centres()
    assert values[int(ly * 4), int(lx * 4)] == 255 and values[int(ry * 4), int(rx * 4)] == 0
    # It is submittable as it is, with its form fields.
    job = faces32_client.post("/inpaint", files={"image": ("i.png", png_bytes(image)),
                                                 "mask": ("m.png", png_bytes(mask))}, data=body["form"])
    assert job.status_code == 202, job.text


def test_the_example_needs_the_api_key_like_every_route(faces32_client):
    r = faces32_client.get("/models/faces32/example", headers={"Authorization": ""})
    assert r.status_code == 401 and "API key" in r.json()["detail"]


@pytest.mark.parametrize("name", ["nope", "FACES32", "faces32x", "tiny%20"])
def test_an_example_for_an_unknown_model_is_404_json(faces32_client, name):
    r = faces32_client.get(f"/models/{name}/example")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert "unknown model" in r.json()["detail"] and "available: ['faces32', 'tiny']" in r.json()["detail"]


def test_every_preset_has_an_example_and_a_diffusers_folder_only_for_a_domain_we_know(redis_db, faces32_client):
    import time

    for name in ("tiny", "faces32"):
        body = faces32_client.get(f"/models/{name}/example").json()
        assert body["width"] == 128 and body["form"]["strategy"] == "resize"
    # Live workers announce diffusers folders; a church model gets no stand-in, a face model the face.
    base = {"description": "d", "class_cond": False, "num_classes": None, "classifier": False, "diffusion_steps": 1000,
            "defaults": {"steps": 250, "jump_length": 10, "jump_n_sample": 10, "n_sample": 1, "classifier_scale": 0.0},
            "source": "diffusers", "photographic": True, "provenance": "p", "licence": "l", "seen_at": time.time()}
    redis_db.hset(jobs.models_key(), mapping={
        "church": json.dumps({**base, "name": "church", "image_size": 256, "framing": "region",
                              "domain": "photographs of church exteriors (LSUN church), 256x256"}),
        "celebahq": json.dumps({**base, "name": "celebahq", "image_size": 256, "framing": "whole",
                                "domain": "aligned, centred photographs of faces (CelebA-HQ), 256x256"}),
        "tinyddpm": json.dumps({**base, "name": "tinyddpm", "image_size": 32, "framing": "region", "photographic": None,
                                "domain": "not stated: the folder does not say what the model was trained on (add a "
                                          "repaint.json with a 'domain'); expect good fills only on images like its "
                                          "training set, 32x32"})})
    unstated = faces32_client.get("/models/tinyddpm/example").json()["detail"]
    assert "its folder does not say what it was trained on" in unstated and "trained on not stated" not in unstated
    r = faces32_client.get("/models/church/example")
    assert r.status_code == 404 and "no example for model 'church'" in r.json()["detail"], r.text
    assert "church exteriors" in r.json()["detail"]
    body = faces32_client.get("/models/celebahq/example").json()
    assert (body["width"], body["height"]) == (256, 256) and "stand-in" in " ".join(body["notes"])


def test_the_example_is_drawn_without_torch():
    """The API process never imports torch (tests/test_end_to_end.py): drawing an example must not either."""
    import subprocess
    import sys

    from tests.procs import ROOT

    code = ("import sys; from service.app import create_app; create_app(); "
            "from service.examples import example_for_model; from worker.catalog import MODELS; "
            "[example_for_model({'name': n, **i}) for n, i in MODELS.items()]; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
