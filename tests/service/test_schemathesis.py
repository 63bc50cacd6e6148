"""Property-based fuzzing of the whole OpenAPI schema: no input may cause a server error."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from service.settings import ApiSettings
from worker import jobs
from worker.runtime import Runtime
from worker.settings import WorkerSettings


@pytest.fixture()
def api_schema(redis_server, redis_db):
    redis_db.hset(jobs.models_key(), "tiny", json.dumps(Runtime(WorkerSettings(model="tiny", device="cpu")).describe()))
    app = create_app(ApiSettings(redis_url=redis_server.url, model="tiny"))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_server_errors(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            response = case.call()
            not_ready = case.path == "/readyz" and response.status_code == 503  # documented: no worker here
            assert response.status_code < 500 or not_ready, (case.method, case.path, response.status_code, response.text[:500])
            if response.status_code >= 400:
                assert "detail" in response.json(), response.text[:500]

        no_server_error()
