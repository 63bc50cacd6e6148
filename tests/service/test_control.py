"""Overload and control at the API: queue limits, API keys, idempotent retries, cancellation."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from rq.job import Job
from rq.serializers import JSONSerializer

from service.app import create_app
from service.settings import ApiSettings
from tests.conftest import face_and_mask, png_bytes
from worker import jobs
from worker.runtime import Runtime
from worker.settings import WorkerSettings


@pytest.fixture(scope="module")
def tiny_description():
    return Runtime(WorkerSettings(model="tiny", device="cpu")).describe()


def make_client(redis_server, redis_db, tiny_description, **overrides):
    redis_db.hset(jobs.models_key(), "tiny", json.dumps(tiny_description))
    return TestClient(create_app(ApiSettings(redis_url=redis_server.url, model="tiny", **overrides)))


def post(client, seed=1, headers=None, image_seed=0, **fields):
    img, msk = face_and_mask(seed=image_seed)
    return client.post("/inpaint", files={"image": ("i.png", png_bytes(img)), "mask": ("m.png", png_bytes(msk))},
                       data={"seed": str(seed), **fields}, headers=headers or {})


def test_full_queue_answers_429_with_retry_after(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description, max_queue_length=2) as client:
        assert [post(client).status_code for _ in range(2)] == [202, 202]
        r = post(client)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "full" in r.json()["detail"]


def test_api_keys_guard_everything_but_health(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description, api_keys="k1, k2") as client:
        assert post(client).status_code == 401
        assert post(client, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = post(client, headers={"Authorization": "Bearer k2"})
        assert r.status_code == 202
        job_url = r.headers["location"]
        assert client.get(job_url).status_code == 401
        assert client.get(job_url, headers={"Authorization": "Bearer k2"}).status_code == 200
        # Another key's job does not exist for the caller (tests/service/test_tenants.py has the rest).
        assert client.get(job_url, headers={"Authorization": "Bearer k1"}).status_code == 404
        assert client.get("/models").status_code == 401
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200  # configurable, open by default
    with make_client(redis_server, redis_db, tiny_description, api_keys="k1", metrics_require_key=True) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_idempotency_key_returns_the_same_job(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description) as client:
        first = post(client, headers={"Idempotency-Key": "abc"})
        again = post(client, headers={"Idempotency-Key": "abc"})
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert again.json()["status"] == "queued"
        assert client.get("/models").json()["models"][0]["queued"] == 1
        # A replay answers with the job's status now, a real one.
        assert client.delete(f"/jobs/{first.json()['id']}").status_code in (200, 202)
        assert post(client, headers={"Idempotency-Key": "abc"}).json()["status"] == "canceled"
        other = post(client, seed=2, headers={"Idempotency-Key": "abc"})
        assert other.status_code == 409 and "different" in other.json()["detail"]
        assert post(client, headers={"Idempotency-Key": "xyz"}).json()["id"] != first.json()["id"]


def test_an_idempotent_retry_is_answered_before_admission_checks(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description, max_queue_length=1) as client:
        first = post(client, headers={"Idempotency-Key": "retry-me"})
        assert first.status_code == 202 and post(client).status_code == 429  # the queue is now full
        again = post(client, headers={"Idempotency-Key": "retry-me"})
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"


def test_the_idempotency_fingerprint_covers_the_webhook(redis_server, redis_db, tiny_description):
    settings = {"webhook_allowed_hosts": "*", "webhook_secret": "a-shared-webhook-secret"}
    with make_client(redis_server, redis_db, tiny_description, **settings) as client:
        key = {"Idempotency-Key": "hooked"}
        first = post(client, headers=key, webhook="http://93.184.216.34/a")
        assert first.status_code == 202
        assert post(client, headers=key, webhook="http://93.184.216.34/a").json()["id"] == first.json()["id"]
        for changed in ({"webhook": "http://93.184.216.34/b"}, {"webhook": "http://93.184.216.34/a",
                                                                 "webhook_events": "completed"}, {}):
            r = post(client, headers=key, **changed)
            assert r.status_code == 409, (changed, r.text)


def test_idempotency_keys_are_scoped_to_the_api_key(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description, api_keys="k1,k2") as client:
        one = post(client, headers={"Idempotency-Key": "same", "Authorization": "Bearer k1"})
        two = post(client, headers={"Idempotency-Key": "same", "Authorization": "Bearer k2"}, seed=7)
        assert one.status_code == two.status_code == 202 and one.json()["id"] != two.json()["id"]


def test_deleting_a_queued_job_cancels_it_for_good(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description) as client:
        job_id = post(client).json()["id"]
        r = client.delete(f"/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        assert client.get(f"/jobs/{job_id}").json()["status"] == "canceled"
        assert Job.fetch(job_id, connection=redis_db, serializer=JSONSerializer).get_status() == "canceled"
        assert client.get("/models").json()["models"][0]["queued"] == 0
        assert client.delete(f"/jobs/{job_id}").json()["status"] == "canceled"  # idempotent
        assert client.get(f"/jobs/{job_id}/result").status_code == 409
        assert 'repaint_jobs_total{model="tiny",status="canceled"} 1.0' in client.get("/metrics").text


def test_oversized_body_is_refused_from_its_length(redis_server, redis_db, tiny_description):
    with make_client(redis_server, redis_db, tiny_description, max_upload_bytes=10_000) as client:
        r = client.post("/inpaint", content=b"x" * 100_000, headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_derived_timeout_scales_with_the_measured_pass_time(redis_server, redis_db, tiny_description):
    """A job's run time is its evaluations per sample times the time of one batched pass; the old
    timeout used seconds per *sample* and let jobs in batches of more than 3 samples overrun it."""
    redis_db.set(jobs.speed_key("tiny"), 2.0)  # what a worker measured: seconds per forward pass
    img, msk = face_and_mask()
    files = {"image": ("i.png", png_bytes(img)), "mask": ("m.png", png_bytes(msk))}
    with make_client(redis_server, redis_db, tiny_description) as client:
        timeouts = []
        for n in (1, 4):
            r = client.post("/inpaint", files=files, data={"preset": "paper", "num_samples": str(n)})
            timeouts.append(int(redis_db.hget(jobs.job_key(r.json()["id"]), "timeout")))
    assert timeouts == [3 * 2 * 2410 + 60] * 2  # samples of one job share every pass
