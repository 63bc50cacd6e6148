"""Many API keys on one service: each sees only its own jobs, has its own limits, and no key
reaches Redis. Real Redis, the app in-process; no worker needed."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import ApiSettings
from service.tenancy import Keyring, TenancyError
from tests.conftest import face_and_mask, png_bytes
from worker import jobs
from worker.runtime import Runtime
from worker.settings import WorkerSettings

KEYS = {"alice": "alice-secret-key-1", "bob": "bob-secret-key-2", "ops": "ops-secret-key-3"}


@pytest.fixture(scope="module")
def tiny_description():
    return Runtime(WorkerSettings(model="tiny", device="cpu")).describe()


def make_client(redis_server, redis_db, tiny_description, **overrides):
    redis_db.hset(jobs.models_key(), "tiny", json.dumps(tiny_description))
    settings = ApiSettings(redis_url=redis_server.url, model="tiny",
                           api_keys=",".join(f"{n}:{k}" for n, k in KEYS.items()), admin_keys="ops", **overrides)
    return TestClient(create_app(settings))


@pytest.fixture()
def client(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description) as c:
        yield c


def auth(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def post(client, who: str, **fields):
    img, msk = face_and_mask()
    return client.post("/inpaint", headers=auth(who), data={k: str(v) for k, v in fields.items()},
                       files={"image": ("i.png", png_bytes(img)), "mask": ("m.png", png_bytes(msk))})


JOB_ROUTES = [("GET", "/jobs/{id}"), ("DELETE", "/jobs/{id}"), ("GET", "/jobs/{id}/result"),
              ("GET", "/jobs/{id}/preview"), ("GET", "/jobs/{id}/events")]


@pytest.mark.parametrize("method, route", JOB_ROUTES)
def test_another_keys_job_is_answered_exactly_as_an_unknown_one(client, method, route):
    job_id = post(client, "alice").json()["id"]
    unknown = str(uuid.uuid4())
    theirs = client.request(method, route.format(id=job_id), headers=auth("bob"))
    nobody = client.request(method, route.format(id=unknown), headers=auth("bob"))
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json()["detail"] == nobody.json()["detail"].replace(unknown, job_id)
    # The owner still has it, untouched (bob's DELETE canceled nothing).
    mine = client.get(f"/jobs/{job_id}", headers=auth("alice")).json()
    assert mine["status"] == "queued" and mine["tenant"] == "alice" and not mine["cancel_requested"]


def test_an_admin_key_sees_and_cancels_every_tenants_jobs(client):
    job_id = post(client, "alice").json()["id"]
    assert client.get(f"/jobs/{job_id}", headers=auth("ops")).json()["tenant"] == "alice"
    assert client.delete(f"/jobs/{job_id}", headers=auth("ops")).json()["status"] == "canceled"
    assert client.get(f"/jobs/{job_id}", headers=auth("alice")).json()["status"] == "canceled"


def test_idempotency_keys_are_per_tenant(client):
    first = client.post  # same Idempotency-Key, same upload, two tenants: two jobs
    img, msk = face_and_mask()
    files = {"image": ("i.png", png_bytes(img)), "mask": ("m.png", png_bytes(msk))}
    a = first("/inpaint", headers={**auth("alice"), "Idempotency-Key": "k"}, files=files, data={"seed": "1"})
    b = first("/inpaint", headers={**auth("bob"), "Idempotency-Key": "k"}, files=files, data={"seed": "1"})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_no_api_key_is_stored_in_redis(client, redis_db):
    post(client, "alice", seed=1)
    img, msk = face_and_mask()
    client.post("/inpaint", headers={**auth("bob"), "Idempotency-Key": "x"}, data={"seed": "2"},
                files={"image": ("i.png", png_bytes(img)), "mask": ("m.png", png_bytes(msk))})
    for key in redis_db.scan_iter():
        kind = redis_db.type(key).decode()
        values = {"string": lambda: [redis_db.get(key)], "hash": lambda: list(redis_db.hgetall(key).values()),
                  "list": lambda: redis_db.lrange(key, 0, -1), "set": lambda: list(redis_db.smembers(key)),
                  "zset": lambda: redis_db.zrange(key, 0, -1), "stream": lambda: []}[kind]()
        for secret in KEYS.values():
            assert secret.encode() not in key and not any(secret.encode() in v for v in values), key


def test_a_tenants_waiting_jobs_are_limited_and_the_refusal_names_the_limit(redis_server, redis_db,
                                                                             tiny_description):
    with make_client(redis_server, redis_db, tiny_description, tenant_max_queued=2) as client:
        assert [post(client, "alice").status_code for _ in range(2)] == [202, 202]
        refused = post(client, "alice")
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert "alice" in refused.json()["detail"] and "REPAINT_TENANT_MAX_QUEUED=2" in refused.json()["detail"]
        assert post(client, "bob").status_code == 202  # another tenant is not held up


def test_the_bare_key_form_still_works_and_is_named_by_a_digest(redis_server, redis_db, tiny_description):
    redis_db.hset(jobs.models_key(), "tiny", json.dumps(tiny_description))
    settings = ApiSettings(redis_url=redis_server.url, model="tiny", api_keys="plainkey")
    with TestClient(create_app(settings)) as client:
        img, msk = face_and_mask()
        r = client.post("/inpaint", headers={"Authorization": "Bearer plainkey"},
                        files={"image": ("i.png", png_bytes(img)), "mask": ("m.png", png_bytes(msk))})
        assert r.status_code == 202
        tenant = client.get(r.headers["location"], headers={"Authorization": "Bearer plainkey"}).json()["tenant"]
        assert tenant.startswith("key-") and "plainkey" not in tenant
        assert client.get(r.headers["location"]).status_code == 401


@pytest.mark.parametrize("keys, admins, weights, message", [
    ("a:k1,a:k2", "", "", "appears twice"),
    ("a:k1,b:k1", "", "", "also another name's key"),
    ("a b:k1", "", "", "use 1-64 letters"),
    ("a:k1", "root", "", "REPAINT_ADMIN_KEYS names ['root']"),
    ("a:k1", "", "a=0", "0 < weight"),
])
def test_a_malformed_key_list_stops_the_api_with_the_reason(keys, admins, weights, message):
    with pytest.raises(TenancyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Keyring(keys, admins, weights)


def test_uploads_are_stored_as_sent_not_re_encoded(client, redis_db):
    """A photograph sent as JPEG stays a JPEG in Redis (a PNG re-encoding took 8x its bytes)."""
    rng = __import__("numpy").random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype="uint8")).resize((1600, 1200))
    sent = io.BytesIO()
    photo.save(sent, format="JPEG", quality=90)
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (700, 500, 900, 700))
    r = client.post("/inpaint", headers=auth("alice"), data={"strategy": "resize"},
                    files={"image": ("p.jpg", sent.getvalue()), "mask": ("m.png", png_bytes(mask))})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert redis_db.get(jobs.input_key(job_id, "image")) == sent.getvalue()
    assert redis_db.strlen(jobs.input_key(job_id, "mask")) < 5_000  # a 1-bit PNG of the region


def test_metrics_label_tenants_by_name(client):
    post(client, "alice")
    post(client, "alice")
    text = client.get("/metrics").text
    assert 'repaint_tenant_jobs_waiting{tenant="alice"} 2.0' in text
    assert 'repaint_tenant_jobs_waiting{tenant="bob"} 0.0' in text
    assert not any(secret in text for secret in KEYS.values())


def test_uploads_beyond_the_pixel_budget_wait_then_get_503(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description, max_image_pixels=5000, pixel_budget=10_000,
                     pixel_budget_wait=0.2) as client:
        budget = client.app.state.pixels
        with budget.hold(10_000, wait=0):  # other uploads being decoded
            refused = post(client, "alice")
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "10000 pixels" in refused.json()["detail"]
        assert post(client, "alice").status_code == 202 and budget.in_use == 0
